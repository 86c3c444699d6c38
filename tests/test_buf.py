"""buf on the wire contract: lint (STANDARD, with the documented exceptions of
buf.yaml), no breaking change against the released baseline, and `buf curl`
through server reflection against the live authority."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from helpers import NODE_DIR, ROOT, node_modules, reserve_request

from credit.v1 import authority_pb2

BUF = NODE_DIR / "node_modules" / ".bin" / "buf"
BASELINE = ROOT / "protos" / "released.binpb"

pytestmark = pytest.mark.skipif(shutil.which("npm") is None or shutil.which("node") is None,
                                reason="npm not installed (buf comes from the npm package @bufbuild/buf)")


@pytest.fixture(scope="module")
def buf() -> str:
    """The pinned buf CLI, installed by `make node-deps` (npm ci from the lockfile) if missing."""
    node_modules()
    assert BUF.exists(), "make node-deps did not install buf"
    return str(BUF)


def run(*args: str, cwd: Path = ROOT, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def test_buf_version_is_the_pinned_one(buf):
    pinned = json.loads((NODE_DIR / "package.json").read_text())["devDependencies"]["@bufbuild/buf"]
    assert run(buf, "--version").stdout.strip() == pinned


def test_buf_lint_passes(buf):
    run(buf, "lint")


def test_lint_still_applies_standard_rules_outside_the_exceptions(buf, tmp_path):
    """The exceptions are scoped to the fixed files: a new file gets every STANDARD rule."""
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "protos" / "credit", tmp_path / "protos" / "credit")
    (tmp_path / "protos" / "credit" / "v1" / "extra.proto").write_text(
        'syntax = "proto3";\npackage credit.v1;\n// Doc.\nservice Extra {\n  // Doc.\n'
        '  rpc Get(GetRequest) returns (Thing);\n}\n// Doc.\nmessage GetRequest {}\n'
        '// Doc.\nmessage Thing {}\n// Doc.\nenum Color {\n  // Doc.\n  COLOR_UNSPECIFIED = 0;\n'
        '  // Doc.\n  RED = 1;\n}\n')
    result = run(buf, "lint", "--error-format=json", cwd=tmp_path, check=False)
    assert result.returncode != 0
    rules = {json.loads(line)["type"] for line in result.stdout.splitlines()}
    assert {"SERVICE_SUFFIX", "RPC_RESPONSE_STANDARD_NAME", "ENUM_VALUE_PREFIX"} <= rules


def test_no_breaking_change_against_the_released_protos(buf):
    assert BASELINE.exists()
    run(buf, "breaking", "--against", str(BASELINE))


def test_breaking_detects_a_renamed_field(buf, tmp_path):
    """The baseline check has teeth: renaming a hot-path field fails it."""
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "protos" / "credit", tmp_path / "protos" / "credit")
    proto = tmp_path / "protos" / "credit" / "v1" / "authority.proto"
    text = proto.read_text()
    assert "int64 charged_millicredits = 1;" in text
    proto.write_text(text.replace("int64 charged_millicredits = 1;", "int64 charged = 1;"))
    result = run(buf, "breaking", "--against", str(BASELINE), "--error-format=json", cwd=tmp_path, check=False)
    assert result.returncode != 0
    rules = {json.loads(line)["type"] for line in result.stdout.splitlines()}
    assert "FIELD_SAME_NAME" in rules or "FIELD_NO_DELETE" in rules, result.stdout


def _curl(buf: str, authority, method: str, token: str | None, body: dict) -> subprocess.CompletedProcess:
    args = [buf, "curl", "--protocol", "grpc", "--http2-prior-knowledge", "--data", json.dumps(body)]
    if token:
        args += ["--header", f"Authorization: Bearer {token}"]
    return run(*args, f"http://{authority.addr}/{method}", check=False)


def test_buf_curl_get_balance_through_reflection(buf, authority, tokens, world, spend):
    org_id, user_id = world.funded_member(allocation_mc=10_000)
    hold = spend.Reserve(reserve_request(user_id, 1_500, org_id))
    spend.Commit(authority_pb2.CommitRequest(reservation_id=hold.reservation_id, amount_millicredits=400))
    spend.Reserve(reserve_request(user_id, 700, org_id, request_id=uuid.uuid4().hex))

    result = _curl(buf, authority, "credit.v1.CreditAuthority/GetBalance", tokens.spend,
                   {"user_id": user_id, "org_id": org_id})
    assert result.returncode == 0, result.stderr
    # proto3 JSON: camelCase names, int64 as strings, enums by name.
    assert json.loads(result.stdout) == {
        "funding": {"kind": "ORG", "orgId": org_id}, "limitMillicredits": "10000",
        "usedMillicredits": "400", "heldMillicredits": "700", "availableMillicredits": "8900"}


def test_buf_curl_check_for_an_individual_user(buf, authority, tokens, world):
    user_id = world.user(individual_mc=2_000)
    result = _curl(buf, authority, "credit.v1.CreditAuthority/Check", tokens.spend,
                   {"user_id": user_id, "amount_millicredits": "2500"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"funding": {"kind": "INDIVIDUAL"}, "availableMillicredits": "2000"}


def test_buf_curl_without_a_token_is_unauthenticated(buf, authority, world):
    user_id = world.user(individual_mc=1_000)
    result = _curl(buf, authority, "credit.v1.CreditAuthority/GetBalance", None, {"user_id": user_id})
    assert result.returncode != 0
    error = json.loads(result.stderr)
    assert error["code"] == "unauthenticated", result.stderr


def test_buf_curl_lists_the_services_by_reflection(buf, authority):
    result = run(buf, "curl", "--protocol", "grpc", "--http2-prior-knowledge", "--list-services",
                 f"http://{authority.addr}")
    services = set(result.stdout.split())
    assert {"credit.v1.CreditAuthority", "credit.v1.CreditAdmin", "grpc.health.v1.Health"} <= services
