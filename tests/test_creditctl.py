"""creditctl, the installed admin CLI, drives CreditAdmin end to end."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

CREDITCTL = str(Path(sys.executable).parent / "creditctl")


def ctl(authority, tokens, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "CREDIT_AUTHORITY_ADDR": authority.addr, "CREDIT_ADMIN_TOKEN": tokens.admin}
    result = subprocess.run([CREDITCTL, *args], env=env, capture_output=True, text=True, timeout=60)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_creditctl_sets_up_an_org_and_shows_balances_and_usage(authority, tokens, spend):
    org, user = f"cli-org-{uuid.uuid4().hex[:6]}", f"cli-user-{uuid.uuid4().hex[:6]}"
    ctl(authority, tokens, "user-create", user, "--name", "CLI User")
    ctl(authority, tokens, "org-create", org, "--name", "CLI Org")
    ctl(authority, tokens, "member-add", org, user, "--role", "admin", "--default")
    top_up = ctl(authority, tokens, "top-up", org, "10000", "--reference", "inv-42", "--paid", "99.00",
                 "--currency", "USD")
    assert "10000.000" in top_up.stdout
    allocated = ctl(authority, tokens, "allocate", org, user, "5000.5")
    assert "5000.500" in allocated.stdout
    shown = ctl(authority, tokens, "org-show", org).stdout
    assert "4999.500" in shown  # unallocated
    members = ctl(authority, tokens, "members", org).stdout
    assert user in members and "admin" in members

    key = ctl(authority, tokens, "key-create", user, "--org", org, "--name", "laptop").stdout
    assert "secret (shown once): ck_" in key
    key_id = key.split("key id: ")[1].split()[0]
    assert key_id in ctl(authority, tokens, "keys", "--user", user).stdout

    from helpers import reserve_request

    from credit.v1 import authority_pb2

    hold = spend.Reserve(reserve_request(user, 2_000, org, service_name="demo-chat"))
    spend.Commit(authority_pb2.CommitRequest(reservation_id=hold.reservation_id, amount_millicredits=1_234))
    balance = ctl(authority, tokens, "balance", user).stdout
    assert f"org:{org}" in balance and "1.234" in balance and "4999.266" in balance
    usage = ctl(authority, tokens, "usage", "--org", org, "--by", "model").stdout
    assert "demo-chat" in usage and "1.234" in usage
    rows = ctl(authority, tokens, "usage", "--user", user).stdout
    assert hold.reservation_id not in rows and "total: 1 requests, 1.234 credits" in rows
    ctl(authority, tokens, "key-revoke", key_id)


def test_creditctl_grant_needs_a_reference_and_counts_it_once(authority, tokens):
    user = f"cli-solo-{uuid.uuid4().hex[:6]}"
    ctl(authority, tokens, "user-create", user)
    missing = ctl(authority, tokens, "grant", user, "5", check=False)
    assert missing.returncode == 2 and "--reference" in missing.stderr
    for _ in range(2):
        granted = ctl(authority, tokens, "grant", user, "5", "--reason", "goodwill", "--reference", "ticket-9")
        assert "5.000 credits available" in granted.stdout
    other = ctl(authority, tokens, "grant", user, "6", "--reference", "ticket-9", check=False)
    assert other.returncode == 1 and "ALREADY_EXISTS" in other.stderr


def test_creditctl_reports_errors_clearly(authority, tokens):
    failed = ctl(authority, tokens, "allocate", "no-such-org", "nobody", "5", check=False)
    assert failed.returncode == 1 and "NOT_FOUND" in failed.stderr
    bad = ctl(authority, tokens, "grant", "someone", "1.0001", "--reference", "r", check=False)
    assert bad.returncode == 2 and "three decimal places" in bad.stderr
