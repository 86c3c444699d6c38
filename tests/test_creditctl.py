"""creditctl, the installed admin CLI, drives CreditAdmin end to end."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import uuid
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

from conftest import uid
from helpers import reserve_request

from credit.v1 import admin_pb2, authority_pb2
from credit_service.money import format_credits
from credit_service.reports import DEFAULT_WINDOW_DAYS

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


def labelled(text: str) -> dict[str, str]:
    """The `label: value` lines of the CLI's output."""
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def rpc_statement(admin, first: date, org: str = "", user: str = "") -> admin_pb2.Statement:
    """The statement from the first day (UTC) to now, as creditctl asks for it."""
    request = admin_pb2.GetStatementRequest(account=admin_pb2.AccountRef(org_id=org, user_id=user))
    request.start_time.FromDatetime(datetime.combine(first, time(), timezone.utc))
    return admin.GetStatement(request)


def test_creditctl_statement_prints_the_rpc_figures_as_text_and_csv(authority, tokens, world, admin, spend):
    org_id, user_id = world.funded_member(allocation_mc=7_500, pool_mc=20_000)
    reference = uid("po")
    ctl(authority, tokens, "top-up", org_id, format_credits(3_210), "--reference", reference)
    hold = spend.Reserve(reserve_request(user_id, 2_000, org_id, service_name="demo-chat"))
    spend.Commit(authority_pb2.CommitRequest(reservation_id=hold.reservation_id, amount_millicredits=1_234))

    first = datetime.now(timezone.utc).date() - timedelta(days=1)
    s = rpc_statement(admin, first, org=org_id)
    text = ctl(authority, tokens, "statement", org_id, "--from", first.isoformat()).stdout
    shown = labelled(text)
    assert shown["opening balance"] == format_credits(s.opening_balance_millicredits)
    assert shown["closing balance"] == format_credits(s.closing_balance_millicredits)
    assert (shown["credits in"], shown["adjustments"], shown["usage"]) == (
        format_credits(s.credits_in_millicredits), format_credits(s.adjustments_millicredits),
        format_credits(s.usage_millicredits))
    assert reference in [x.reference for x in s.credits_in]
    table = [[cell.strip() for cell in line.split("  ") if cell.strip()] for line in text.splitlines()]
    for x in s.credits_in:
        assert [x.at.ToDatetime(timezone.utc).isoformat(timespec="seconds"), x.kind, format_credits(
            x.amount_millicredits), x.source, x.reference] in table

    rows = list(csv.DictReader(io.StringIO(ctl(authority, tokens, "statement", org_id, "--from", first.isoformat(),
                                               "--csv").stdout)))
    by_section = {r["section"]: r for r in rows}
    assert by_section["closing_balance"]["millicredits"] == str(s.closing_balance_millicredits)
    assert by_section["closing_balance"]["credits"] == format_credits(s.closing_balance_millicredits)
    assert by_section["total_usage"]["millicredits"] == str(-s.usage_millicredits)
    assert [(r["kind"], r["millicredits"], r["source"], r["reference"]) for r in rows if r["section"] == "credits_in"] \
        == [(x.kind, str(x.amount_millicredits), x.source, x.reference) for x in s.credits_in]
    assert [(r["key"], r["requests"], r["credits"]) for r in rows if r["section"] == "usage_by_member"] == \
        [(u.key, str(u.requests), format_credits(u.credits_used_millicredits)) for u in s.usage_by_member]

    mine = labelled(ctl(authority, tokens, "statement", org_id, "--user", user_id).stdout)  # this month so far
    this_month = rpc_statement(admin, datetime.now(timezone.utc).date().replace(day=1), org=org_id, user=user_id)
    assert (mine["allocation changes"], mine["usage"], mine["closing balance"]) == (
        format_credits(this_month.allocation_changes_millicredits), format_credits(this_month.usage_millicredits),
        format_credits(this_month.closing_balance_millicredits))


def test_creditctl_statement_of_an_individual_and_bad_command_lines(authority, tokens, world, admin):
    granted = 4_321
    user_id = world.user(granted)
    day = datetime.now(timezone.utc).date()
    today = day.isoformat()
    shown = labelled(ctl(authority, tokens, "statement", "--individual", user_id, "--from", today,
                         "--to", today).stdout)
    s = rpc_statement(admin, day, user=user_id)
    assert (shown["credits in"], shown["closing balance"]) == (format_credits(s.credits_in_millicredits),
                                                                format_credits(s.closing_balance_millicredits))
    assert s.credits_in_millicredits == granted
    for args in (["statement"], ["statement", "some-org", "--individual", user_id], ["forecast"]):
        wrong = ctl(authority, tokens, *args, check=False)
        assert wrong.returncode == 2 and "error:" in wrong.stderr, args
    assert ctl(authority, tokens, "statement", "--individual", user_id, "--from", "2025-13-01",
               check=False).returncode == 2
    later = ctl(authority, tokens, "statement", "--individual", user_id, "--from", today, "--to", "2000-01-01",
                check=False)
    assert later.returncode == 1 and "INVALID_ARGUMENT" in later.stderr


def test_creditctl_forecast_prints_the_rpc_figures(authority, tokens, world, admin, spend):
    org_id, user_id = world.funded_member(allocation_mc=9_000, pool_mc=30_000)
    hold = spend.Reserve(reserve_request(user_id, 5_000, org_id))
    spend.Commit(authority_pb2.CommitRequest(reservation_id=hold.reservation_id, amount_millicredits=4_321))
    out = ctl(authority, tokens, "forecast", org_id, "--window-days", "3").stdout
    f = admin.GetForecast(admin_pb2.GetForecastRequest(account=admin_pb2.AccountRef(org_id=org_id), window_days=3))
    computed_at = datetime.fromisoformat(out.split("computed at ")[1].split()[0])
    rows = {cells[0] if cells[0] == "pool" else cells[1]: cells
            for cells in (line.split() for line in out.splitlines()[3:])}
    for key, line in (("pool", f.total), *((m.user_id, m) for m in f.members)):
        cells = rows[key]
        assert cells[-4:-1] == [format_credits(line.remaining_millicredits),
                                format_credits(line.used_in_window_millicredits),
                                format_credits(line.burn_rate_millicredits_per_day)]
        runs_out = computed_at + timedelta(microseconds=line.remaining_millicredits * (timedelta(days=1) // timedelta(
            microseconds=1)) // line.burn_rate_millicredits_per_day)
        assert datetime.fromisoformat(cells[-1]) == runs_out
    solo = world.user(1_000)
    quiet = ctl(authority, tokens, "forecast", "--individual", solo).stdout
    assert f"over the last {DEFAULT_WINDOW_DAYS} days" in quiet and quiet.splitlines()[-1].split()[-1] == "never"
