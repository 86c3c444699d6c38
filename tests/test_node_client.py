"""The Node.js client (clients/node) against the live authority: the example's
Check → Reserve → Commit lands, and errors carry their google.rpc details."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import helpers
import pytest
from google.protobuf import json_format
from helpers import NODE_DIR, ROOT

from credit.v1 import admin_pb2, authority_pb2

pytestmark = pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None,
                                reason="Node.js/npm not installed")


@pytest.fixture(scope="module")
def node_modules() -> Path:
    return helpers.node_modules()


def _run_example(authority, token: str, user_id: str, org_id: str = "", **extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CREDIT_AUTHORITY_ADDR": authority.addr, "CREDIT_SERVICE_TOKEN": token,
           "CREDIT_USER_ID": user_id, "CREDIT_ORG_ID": org_id, **extra}
    return subprocess.run(["node", str(NODE_DIR / "example.js")], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def _steps(stdout: str) -> dict[str, dict]:
    return {line["step"]: line for line in map(json.loads, stdout.splitlines())}


def test_example_checks_reserves_and_commits(node_modules, authority, tokens, world, spend, admin):
    org_id, user_id = world.funded_member(allocation_mc=10_000)
    request_id = f"node-{uuid.uuid4().hex}"
    result = _run_example(authority, tokens.spend, user_id, org_id, CREDIT_RESERVE_MILLICREDITS="500",
                          CREDIT_COMMIT_MILLICREDITS="123", CREDIT_REQUEST_ID=request_id)
    assert result.returncode == 0, result.stderr
    steps = _steps(result.stdout)
    assert steps["check"]["allowed"] is True
    assert steps["check"]["funding"] == {"kind": "ORG", "org_id": org_id}
    assert steps["check"]["available_millicredits"] == "10000"
    assert steps["reserve"]["reserved_millicredits"] == "500"
    assert steps["reserve"]["available_millicredits"] == "9500"
    assert steps["reserve"]["request_id"] == request_id
    assert steps["commit"]["charged_millicredits"] == "123"
    assert steps["commit"]["available_millicredits"] == "9877"

    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=user_id, org_id=org_id))
    assert (balance.limit_millicredits, balance.used_millicredits, balance.held_millicredits,
            balance.available_millicredits) == (10_000, 123, 0, 9_877)
    usage = admin.QueryUsage(admin_pb2.QueryUsageRequest(user_id=user_id))
    assert [(r.reservation_id, r.request_id, r.credits_used_millicredits, r.service_name)
            for r in usage.records] == [(steps["reserve"]["reservation_id"], request_id, 123, "node-example")]
    metadata = json_format.MessageToDict(usage.records[0].request_metadata)
    assert metadata["client"] == "clients/node/example.js" and metadata["completion_tokens"] == 5, metadata


def test_example_exits_non_zero_when_the_amount_does_not_fit(node_modules, authority, tokens, world, spend):
    user_id = world.user(individual_mc=100)
    result = _run_example(authority, tokens.spend, user_id, CREDIT_RESERVE_MILLICREDITS="500")
    assert result.returncode == 2
    assert _steps(result.stdout)["check"] == {"step": "check", "allowed": False,
                                              "funding": {"kind": "INDIVIDUAL", "org_id": ""},
                                              "available_millicredits": "100"}
    assert spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=user_id)).held_millicredits == 0


def test_example_reports_a_bad_token_as_json(node_modules, authority, world):
    user_id = world.user(individual_mc=1_000)
    result = _run_example(authority, "not-a-valid-token-at-all", user_id)
    assert result.returncode == 1
    error = json.loads(result.stderr.strip().splitlines()[-1])
    assert error["step"] == "check"
    assert error["error"]["status"] == "UNAUTHENTICATED"


def test_library_decodes_insufficient_credits_details(node_modules, authority, tokens, world):
    user_id = world.user(individual_mc=250)
    script = """
const { CreditAuthorityClient, describeError } = require('./credit');
const client = new CreditAuthorityClient({ address: process.argv[1], token: process.argv[2] });
client.reserve({ request_id: process.argv[4], user_id: process.argv[3], amount_millicredits: 1000,
                 service_type: 'llm_inference', service_name: 'node-test' })
  .then((r) => { console.log(JSON.stringify({ unexpected: r })); process.exitCode = 3; },
        (e) => { console.log(JSON.stringify(describeError(e))); })
  .finally(() => client.close());
"""
    result = subprocess.run(["node", "-e", script, authority.addr, tokens.spend, user_id, uuid.uuid4().hex],
                            cwd=NODE_DIR, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    error = json.loads(result.stdout)
    assert error["status"] == "RESOURCE_EXHAUSTED"
    assert error["error_info"] == {"reason": "INSUFFICIENT_CREDITS", "domain": "credit.v1",
                                   "metadata": {"available": "250", "requested": "1000", "funding": "individual"}}
