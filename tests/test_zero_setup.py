"""`make run`'s path: embedded PostgreSQL, migrations, demo seed, demo.env, serving."""

from __future__ import annotations

import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import httpx
from conftest import ROOT, Stub, free_port

from credit.v1 import admin_pb2, admin_pb2_grpc, authority_pb2, authority_pb2_grpc, types_pb2


def _read_env(path: Path) -> dict[str, str]:
    return {k: shlex.split(v)[0] for k, _, v in (line.partition("=") for line in path.read_text().splitlines())}


def _start(data_dir: Path, port: int, pg_port: int, rest_port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CREDIT_AUTH_TOKENS")}
    env.update(CREDIT_DATA_DIR=str(data_dir), CREDIT_LISTEN_ADDR=f"127.0.0.1:{port}",
               CREDIT_EMBEDDED_PG_PORT=str(pg_port), INFERENCE_PORT=str(rest_port), INFERENCE_HOST="127.0.0.1",
               CREDIT_METRICS_PORT="0")
    return subprocess.Popen([sys.executable, "-m", "credit_service", "up"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_listening(proc: subprocess.Popen, timeout: float = 90) -> str:
    output = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        output.append(line)
        if line.startswith("Ctrl-C stops"):  # the banner's last line: everything listens
            return "".join(output)
    raise AssertionError("make run's stack did not start:\n" + "".join(output))


def _wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} never answered")


def _readme_snippets() -> dict[str, str]:
    """The code blocks the README marks with <!-- readme-test: LANG -->."""
    text = (ROOT / "README.md").read_text()
    found = dict(re.findall(r"<!-- readme-test: (\w+) -->\n```\w+\n(.*?)```", text, re.S))
    assert set(found) == {"python", "sh"}
    return found


def _run_readme_snippets(data_dir: Path, rest_port: int, env: dict[str, str]) -> None:
    """Runs the README's quick starts as printed (only the port differs) against this stack."""
    snippets = {lang: code.replace("localhost:8084", f"localhost:{rest_port}")
                for lang, code in _readme_snippets().items()}
    workdir = Path(tempfile.mkdtemp(prefix="readme-"))
    (workdir / ".data").symlink_to(data_dir)
    (workdir / "snippet.py").write_text(snippets["python"])
    run_env = {**os.environ, **env}
    python = subprocess.run([sys.executable, "snippet.py"], cwd=workdir, env=run_env, capture_output=True,
                            text=True, timeout=60)
    assert python.returncode == 0, python.stderr
    assert "mock_response" in python.stdout
    assert re.search(r"cost: \d+\.\d{3} credits; remaining: 4999\.\d{3}", python.stdout), python.stdout
    shell = subprocess.run(["bash", "-c", snippets["sh"]], cwd=workdir, env=dict(os.environ), capture_output=True,
                           text=True, timeout=60)
    assert shell.returncode == 0, shell.stderr
    assert "x-cost-incurred:" in shell.stdout.lower() and "x-funding-source: org:demo-org" in shell.stdout.lower()
    assert '"funding_source":"individual"' in shell.stdout.replace(" ", "")


def test_up_seeds_the_demo_writes_demo_env_and_serves(tmp_path_factory):
    data_dir = Path(tempfile.mkdtemp(prefix="credit-up-"))
    port, pg_port, rest_port = free_port(), free_port(), free_port()
    proc = _start(data_dir, port, pg_port, rest_port)
    try:
        printed = _wait_listening(proc)
        env = _read_env(data_dir / "demo.env")
        for secret_file in ("demo.env", "auth_tokens", "secrets.key"):  # only the owner may read files with secrets
            assert stat.S_IMODE((data_dir / secret_file).stat().st_mode) == 0o600, secret_file
        assert set(env) >= {"DEMO_API_KEY", "SOLO_API_KEY", "CREDIT_SERVICE_TOKEN", "CREDIT_ADMIN_TOKEN"}
        assert env["DEMO_API_KEY"] in printed and env["CREDIT_SERVICE_TOKEN"] in printed
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            spend = Stub(authority_pb2_grpc.CreditAuthorityStub(channel), env["CREDIT_SERVICE_TOKEN"])
            demo = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id="demo-user"))
            assert (demo.funding.kind, demo.funding.org_id) == (types_pb2.Funding.ORG, "demo-org")
            assert demo.limit_millicredits == 5_000_000
            solo = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id="solo-user"))
            assert solo.funding.kind == types_pb2.Funding.INDIVIDUAL and solo.available_millicredits > 0
            admin = Stub(admin_pb2_grpc.CreditAdminStub(channel), env["CREDIT_ADMIN_TOKEN"])
            org = admin.GetOrganization(admin_pb2.GetOrganizationRequest(org_id="demo-org"))
            assert (org.pool_total_millicredits, org.allocated_millicredits) == (10_000_000, 5_000_000)
            key = admin.VerifyApiKey(admin_pb2.VerifyApiKeyRequest(secret=env["DEMO_API_KEY"]))
            assert key.valid and key.key.user_id == "demo-user"
        _wait_http(f"http://127.0.0.1:{rest_port}/healthz")
        _run_readme_snippets(data_dir, rest_port, env)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0

        # A second start reuses the database, the seed and the keys.
        proc = _start(data_dir, port, pg_port, rest_port)
        _wait_listening(proc)
        assert _read_env(data_dir / "demo.env")["DEMO_API_KEY"] == env["DEMO_API_KEY"]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            admin = Stub(admin_pb2_grpc.CreditAdminStub(channel), env["CREDIT_ADMIN_TOKEN"])
            org = admin.GetOrganization(admin_pb2.GetOrganizationRequest(org_id="demo-org"))
            assert org.pool_total_millicredits == 10_000_000
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        from credit_service.embedded_db import EmbeddedPostgres

        EmbeddedPostgres(data_dir / "pg", pg_port).stop("immediate")
