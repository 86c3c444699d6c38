"""creditctl audit: the operator reads the audit log as a table and as CSV; creditctl's own changes are recorded
with the OS user it runs as (on_behalf_of) beside the operator token's name."""

from __future__ import annotations

import csv
import getpass
import io
import json
import os
import socket
import subprocess

from conftest import uid
from test_creditctl import CREDITCTL, ctl

from credit_service.statement_csv import AUDIT_COLUMNS


def test_creditctl_audit_shows_who_changed_an_allocation_as_a_table_and_as_csv(authority, tokens, world):
    org = world.org(10_000)
    user = world.user()
    ctl(authority, tokens, "member-add", org, user)
    ctl(authority, tokens, "allocate", org, user, "2")
    ctl(authority, tokens, "allocate", org, user, "3.5")
    me = f"{getpass.getuser()}@{socket.gethostname()}"

    table = ctl(authority, tokens, "audit", org, "--action", "SetAllocation").stdout
    lines = [line for line in table.splitlines() if "SetAllocation" in line]
    assert len(lines) == 2, table
    assert all("ops" in line and me in line and f"member {user} in {org}" in line for line in lines), table
    assert "allocation_mc: 2000 -> 3500" in lines[0] and "allocation_mc: null -> 2000" in lines[1], table

    rows = list(csv.DictReader(io.StringIO(ctl(authority, tokens, "audit", org, "--csv").stdout)))
    assert tuple(rows[0]) == AUDIT_COLUMNS
    actions = [r["action"] for r in rows]
    assert actions[:3] == ["SetAllocation", "SetAllocation", "AddMember"], actions
    assert {r["org_id"] for r in rows} == {org}
    newest = rows[0]
    assert (json.loads(newest["before"])["allocation_mc"], json.loads(newest["after"])["allocation_mc"]) == \
        (2_000, 3_500)
    assert newest["actor"] == "ops" and newest["on_behalf_of"] == me and newest["target_id"] == user
    assert [int(r["audit_id"]) for r in rows] == sorted((int(r["audit_id"]) for r in rows), reverse=True)
    # --limit pages through: the same newest records.
    limited = list(csv.DictReader(io.StringIO(ctl(authority, tokens, "audit", org, "--csv", "--limit", "2").stdout)))
    assert [r["audit_id"] for r in limited] == [r["audit_id"] for r in rows[:2]]


def test_creditctl_audit_of_every_org_needs_the_operators_token(authority, tokens, world):
    name = uid("platform")
    ctl(authority, tokens, "platform-create", name, "--orgs", world.org(), "--roles", "spend")
    everything = ctl(authority, tokens, "audit", "--action", "CreatePlatformCredential", "--limit", "1000").stdout
    assert f"platform_credential {name}" in everything
    env = {**os.environ, "CREDIT_AUTHORITY_ADDR": authority.addr, "CREDIT_ADMIN_TOKEN": tokens.read}
    refused = subprocess.run([CREDITCTL, "audit"], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "PERMISSION_DENIED" in refused.stderr and "admin or mint" in refused.stderr
    bad = ctl(authority, tokens, "audit", "--since", "yesterday", check=False)
    assert bad.returncode == 2 and "not an ISO date or time" in bad.stderr
