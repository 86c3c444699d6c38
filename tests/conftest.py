"""Shared test fixtures: a real PostgreSQL (embedded, or DATABASE_URL), the
authority as a real subprocess on a local port, and generated stubs."""

from __future__ import annotations

import os

# Tests fork pg_ctl and friends from a process full of gRPC threads; gRPC's own
# fork handlers are not needed for that and have crashed children.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
# LiteLLM, imported by tests that count tokens, would fetch its price map from the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import asyncio
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
import pytest

from credit.v1 import admin_pb2, admin_pb2_grpc, authority_pb2_grpc
from credit_service.embedded_db import EmbeddedPostgres
from credit_service.migrate import migrate

# Fixtures that live beside their helpers: `payments` (an authority configured for Stripe events).
pytest_plugins = ["payment_events", "two_authorities"]

ROOT = Path(__file__).resolve().parent.parent

# The services the tests start log JSON lines, which tests parse: a LOG_FORMAT=text exported in a
# developer's shell must not change that (tests/test_log_formats.py sets each format explicitly).
os.environ["LOG_FORMAT"] = "json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Tokens:
    """The test callers. `admin` is the operator's (admin+read+mint: it may top up and grant); `service` has
    the REST service's roles as `make run` gives them (spend+read+admin+payments: never mint)."""

    spend: str
    admin: str
    read: str
    other_spend: str
    service: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    def env(self) -> str:
        return ",".join([f"platform:{self.spend}:spend+read", f"ops:{self.admin}:admin+read+mint",
                         f"analytics:{self.read}:read", f"other-platform:{self.other_spend}:spend",
                         f"rest:{self.service}:spend+read+admin+payments"])


@pytest.fixture(scope="session")
def database_url() -> str:
    """A fresh database: on DATABASE_URL's server if set, else an embedded PostgreSQL."""
    base = os.environ.get("DATABASE_URL")
    pg = None
    if base:
        name = f"credit_test_{uuid.uuid4().hex[:8]}"

        async def create() -> None:
            conn = await asyncpg.connect(base)
            await conn.execute(f'CREATE DATABASE "{name}"')
            await conn.close()

        asyncio.run(create())
        url = base.rsplit("/", 1)[0] + "/" + name
    else:
        tmp = Path(tempfile.mkdtemp(prefix="credit-test-pg-"))
        pg = EmbeddedPostgres(tmp / "pg", free_port()).start()
        url = pg.url
    asyncio.run(migrate(url))
    yield url
    if pg is not None:
        pg.stop("immediate")


@pytest.fixture(scope="session")
def tokens() -> Tokens:
    return Tokens(*(secrets.token_urlsafe(24) for _ in range(4)))


class AuthorityProcess:
    """`python -m credit_service serve` as a child process."""

    def __init__(self, database_url: str, tokens: Tokens, extra_env: dict[str, str] | None = None):
        self.database_url = database_url
        self.tokens = tokens
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log_path = Path(tempfile.mkstemp(prefix="authority-", suffix=".log")[1])

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, port: int = 0) -> AuthorityProcess:
        self.port = port or free_port()
        env = {**os.environ, "DATABASE_URL": self.database_url, "CREDIT_LISTEN_ADDR": self.addr,
               "CREDIT_AUTH_TOKENS": self.tokens.env(), "CREDIT_SWEEP_INTERVAL_SECONDS": "0.2",
               "CREDIT_DB_POOL_MAX": "10", "CREDIT_METRICS_PORT": "0",
               "CREDIT_WEBHOOK_HTTP_HOSTS": "127.0.0.1,hooks.example.test", **self.extra_env}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "credit_service", "serve"], env=env,
                                     stdout=log, stderr=log, cwd=ROOT)
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"authority exited: {self.log_path.read_text()[-3000:]}")
            try:
                with grpc.insecure_channel(self.addr) as channel:
                    grpc.channel_ready_future(channel).result(timeout=0.5)
                    return
            except grpc.FutureTimeoutError:
                time.sleep(0.1)
        raise RuntimeError(f"authority did not start: {self.log_path.read_text()[-3000:]}")

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            self.proc.wait(timeout=15)


@pytest.fixture(scope="session")
def authority(database_url: str, tokens: Tokens) -> AuthorityProcess:
    process = AuthorityProcess(database_url, tokens).start()
    yield process
    process.stop()


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


class Stub:
    """A generated stub that always sends one token."""

    def __init__(self, stub: object, token: str):
        self._stub = stub
        self._metadata = bearer(token)

    def __getattr__(self, name: str):
        method = getattr(self._stub, name)

        def call(request, **kwargs):
            kwargs.setdefault("metadata", self._metadata)
            kwargs.setdefault("timeout", 30)
            return method(request, **kwargs)

        return call


@pytest.fixture(scope="session")
def channel(authority: AuthorityProcess) -> grpc.Channel:
    with grpc.insecure_channel(authority.addr) as ch:
        yield ch


@pytest.fixture(scope="session")
def spend(channel, tokens) -> Stub:
    return Stub(authority_pb2_grpc.CreditAuthorityStub(channel), tokens.spend)


@pytest.fixture(scope="session")
def admin(channel, tokens) -> Stub:
    return Stub(admin_pb2_grpc.CreditAdminStub(channel), tokens.admin)


@pytest.fixture
async def aio_spend(authority, tokens):
    async with grpc.aio.insecure_channel(authority.addr) as ch:
        yield Stub(authority_pb2_grpc.CreditAuthorityStub(ch), tokens.spend)


@pytest.fixture
async def db(database_url):
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class World:
    """Creates uniquely named users and orgs through CreditAdmin."""

    def __init__(self, admin: Stub):
        self.admin = admin

    def user(self, individual_mc: int = 0) -> str:
        user_id = uid("user")
        self.admin.CreateUser(admin_pb2.CreateUserRequest(user_id=user_id, display_name="Test"))
        if individual_mc:
            self.admin.GrantIndividualCredits(admin_pb2.GrantIndividualCreditsRequest(
                user_id=user_id, amount_millicredits=individual_mc, reason="test", reference=uid("grant")))
        return user_id

    def org(self, pool_mc: int = 0) -> str:
        org_id = uid("org")
        self.admin.CreateOrganization(admin_pb2.CreateOrganizationRequest(org_id=org_id, name="Test org"))
        if pool_mc:
            self.top_up(org_id, pool_mc)
        return org_id

    def top_up(self, org_id: str, amount_mc: int) -> admin_pb2.Organization:
        return self.admin.TopUpPool(admin_pb2.TopUpPoolRequest(
            org_id=org_id, amount_millicredits=amount_mc, purchase_reference=uid("po")))

    def member(self, org_id: str, user_id: str, allocation_mc: int = 0, default: bool = False,
               role: int = admin_pb2.MEMBER_ROLE_MEMBER) -> None:
        self.admin.AddMember(admin_pb2.AddMemberRequest(org_id=org_id, user_id=user_id, role=role,
                                                        is_default=default))
        if allocation_mc:
            self.allocate(org_id, user_id, allocation_mc)

    def allocate(self, org_id: str, user_id: str, allocation_mc: int) -> admin_pb2.Member:
        return self.admin.SetAllocation(admin_pb2.SetAllocationRequest(
            org_id=org_id, user_id=user_id, allocation_millicredits=allocation_mc))

    def funded_member(self, allocation_mc: int, pool_mc: int | None = None) -> tuple[str, str]:
        org_id = self.org(pool_mc if pool_mc is not None else allocation_mc)
        user_id = self.user()
        self.member(org_id, user_id, allocation_mc)
        return org_id, user_id


@pytest.fixture(scope="session")
def world(admin) -> World:
    return World(admin)


@pytest.fixture(scope="session")
def upstream():
    """A local OpenAI-compatible upstream that LiteLLM calls over real HTTP."""
    from upstream import Upstream

    server = Upstream(free_port()).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def models_file(upstream) -> Path:
    from rest_support import write_catalogue

    return write_catalogue(Path(tempfile.mkdtemp(prefix="models-")) / "models.yaml", upstream)


# ---- no silent skips ---------------------------------------------------------------------------

# Tests that may skip, and why (README, "Tests"). Anything else that skips fails the run:
# `make test` installs what the tests need (Node.js, npm, Chromium), so a skip means a broken setup.
# CREDIT_TEST_ALLOW_SKIPS=1 lets a developer without root (no apt) run the rest.
ALLOWED_SKIPS: dict[str, str] = {}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = [r.nodeid for r in (reporter.stats.get("skipped", []) if reporter else [])]
    unexpected = [nodeid for nodeid in skipped if nodeid not in ALLOWED_SKIPS]
    if unexpected and os.environ.get("CREDIT_TEST_ALLOW_SKIPS") != "1":
        print(f"\n{len(unexpected)} test(s) skipped that must run (see ALLOWED_SKIPS in tests/conftest.py):")
        for nodeid in unexpected[:20]:
            print(f"  {nodeid}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
