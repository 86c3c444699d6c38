"""`make run`'s path: embedded PostgreSQL, migrations, demo seed, demo.env, serving."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from conftest import ROOT, Stub, free_port
from credit.v1 import admin_pb2, admin_pb2_grpc, authority_pb2, authority_pb2_grpc, types_pb2


def _read_env(path: Path) -> dict[str, str]:
    return {k: shlex.split(v)[0] for k, _, v in (line.partition("=") for line in path.read_text().splitlines())}


def _start(data_dir: Path, port: int, pg_port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CREDIT_AUTH_TOKENS")}
    env.update(CREDIT_DATA_DIR=str(data_dir), CREDIT_LISTEN_ADDR=f"127.0.0.1:{port}",
               CREDIT_EMBEDDED_PG_PORT=str(pg_port))
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
        if "listening on" in line:
            return "".join(output)
    raise AssertionError("authority did not start:\n" + "".join(output))


def test_up_seeds_the_demo_writes_demo_env_and_serves(tmp_path_factory):
    data_dir = Path(tempfile.mkdtemp(prefix="credit-up-"))
    port, pg_port = free_port(), free_port()
    proc = _start(data_dir, port, pg_port)
    try:
        printed = _wait_listening(proc)
        env = _read_env(data_dir / "demo.env")
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
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0

        # A second start reuses the database, the seed and the keys.
        proc = _start(data_dir, port, pg_port)
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
