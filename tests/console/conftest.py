"""Fixtures of the org console and low-balance alerts.

The console's admin actions go through the inference service's authority
token, which therefore needs spend+read+admin, and payments as `make run`
gives it (never mint: the console cannot create credits; the REST layer
enforces org roles itself). The session tokens keep their roles (tests elsewhere assert
that the spend token cannot administer), so this folder runs a second
authority process on the same database whose token list adds such a token,
and an inference service that uses it. Both authority processes run the
alert worker, as replicas would.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from conftest import ROOT, AuthorityProcess, Tokens, free_port
from oidc.harness import OidcProvider
from rest_support import InferenceProcess, make_key

from credit.v1 import admin_pb2

ARTIFACTS = ROOT / "tests" / "artifacts"


@dataclass
class ConsoleTokens(Tokens):
    console: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    def env(self) -> str:
        return super().env() + f",console:{self.console}:spend+read+admin+payments"


@pytest.fixture(scope="session")
def console_tokens(tokens) -> ConsoleTokens:
    return ConsoleTokens(tokens.spend, tokens.admin, tokens.read, tokens.other_spend, tokens.service)


@pytest.fixture(scope="session")
def console_authority(database_url, console_tokens, authority) -> AuthorityProcess:
    process = AuthorityProcess(database_url, console_tokens,
                               {"CREDIT_ALERT_RETRY_BASE_SECONDS": "0.3", "CREDIT_ALERT_POLL_SECONDS": "1"}).start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def console_inference(console_authority, console_tokens, models_file) -> InferenceProcess:
    process = InferenceProcess(console_authority, console_tokens.console, models_file).start()
    yield process
    process.stop()


@dataclass
class Org:
    """An org with an owner, an admin and two members, each with a user key."""

    org_id: str
    owner: str
    admin_user: str
    member: str
    other: str
    keys: dict[str, str]


@pytest.fixture(scope="module")
def sso(console_authority, console_tokens, models_file):
    """The identity provider (tests/oidc/) and two REST services on it: strict (unknown users refused) and
    open (created on first sign-in); one set per test module (test_sso.py, test_sso_browser.py)."""
    strict = InferenceProcess(console_authority, console_tokens.console, models_file)
    open_ = InferenceProcess(console_authority, console_tokens.console, models_file)
    provider = OidcProvider([strict.url, open_.url]).start()
    strict.extra_env = provider.sso_env(auto_create=False)
    open_.extra_env = provider.sso_env(auto_create=True)
    try:
        yield provider, strict.start(), open_.start()
    finally:
        for process in (strict, open_):
            process.stop()
        provider.stop()


@pytest.fixture
def org(world, admin) -> Org:
    org_id = world.org(1_000_000)  # 1,000 credits
    owner, admin_user, member, other = (world.user() for _ in range(4))
    world.member(org_id, owner, 200_000, role=admin_pb2.MEMBER_ROLE_OWNER)
    world.member(org_id, admin_user, 100_000, role=admin_pb2.MEMBER_ROLE_ADMIN)
    world.member(org_id, member, 100_000)
    world.member(org_id, other, 50_000)
    keys = {name: make_key(admin, user)[0] for name, user in
            (("owner", owner), ("admin", admin_user), ("member", member), ("other", other))}
    return Org(org_id, owner, admin_user, member, other, keys)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat(inference: InferenceProcess, key: str, content: str = "Hello", model: str = "up-chat",
         request_id: str | None = None) -> httpx.Response:
    headers = auth(key)
    if request_id:
        headers["Idempotency-Key"] = request_id
    response = httpx.post(f"{inference.base_url}/chat/completions", headers=headers, timeout=60,
                          json={"model": model, "messages": [{"role": "user", "content": content}],
                                "max_tokens": 20})
    assert response.status_code == 200, response.text
    return response


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


class WebhookReceiver:
    """A tiny HTTP server on 127.0.0.1 that records every POST; answers `statuses` in turn, then 200."""

    def __init__(self):
        self.received: list[Received] = []
        self.statuses: list[int] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver._lock:
                    receiver.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                      body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/credits"

    def start(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, count: int, timeout: float = 20) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.05)
        raise AssertionError(f"expected {count} webhook calls, got {len(self.received)}")


@pytest.fixture
def receiver() -> WebhookReceiver:
    server = WebhookReceiver().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
