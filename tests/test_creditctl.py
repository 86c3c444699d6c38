"""creditctl, the installed admin CLI, drives CreditAdmin end to end."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
import uuid
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

import grpc
import pytest
from conftest import uid
from helpers import error_info, reserve_request
from rest_support import make_key

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


# ---- rate limits ----

def limit_rows(text: str) -> dict[str, dict[str, str]]:
    """creditctl's limits table as {who: {column: cell}} (cells are two or more spaces apart)."""
    lines = [re.split(r"\s{2,}", line.strip()) for line in text.splitlines() if line.strip()]
    start = next(i for i, cells in enumerate(lines) if cells[0] == "scope")
    header = lines[start]
    return {cells[1]: dict(zip(header, cells, strict=True)) for cells in lines[start + 2:]}


def listed(admin, org_id: str = "", user_id: str = "") -> dict[str, admin_pb2.RateLimit]:
    answer = admin.ListRateLimits(admin_pb2.ListRateLimitsRequest(org_id=org_id, user_id=user_id))
    return {r.key_id or r.user_id or r.org_id: r for r in answer.limits}


def rate_limited(call) -> dict[str, str]:
    """The ErrorInfo metadata of a Reserve the authority refused for a rate limit."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    info = error_info(caught.value)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and info and info.reason == "RATE_LIMITED"
    return dict(info.metadata)


def test_creditctl_rate_limit_sets_a_members_limits_the_authority_enforces(authority, tokens, world, admin, spend):
    org_id, user_id = world.funded_member(allocation_mc=100_000)
    shown = ctl(authority, tokens, "rate-limit", org_id, "--user", user_id, "--rpm", "2", "--max-parallel", "5",
                "--credits-per-day", "10.5").stdout
    assert f"set the limits of member {user_id}" in shown
    row = listed(admin, org_id)[user_id]
    assert (row.scope, row.requests_per_minute, row.max_parallel, row.credits_per_day_millicredits) == (
        "member", 2, 5, 10_500)
    assert not row.HasField("tokens_per_minute") and not row.HasField("credits_per_month_millicredits")

    holds = [spend.Reserve(reserve_request(user_id, 1_250, org_id)) for _ in range(2)]
    meta = rate_limited(lambda: spend.Reserve(reserve_request(user_id, 1_000, org_id)))
    assert (meta["limit"], meta["value"], meta["scope"]) == ("requests_per_minute", "2", "member")
    now = limit_rows(ctl(authority, tokens, "rate-limits", org_id).stdout)[user_id]
    assert (now["rpm"], now["requests left"], now["max parallel"], now["open holds"]) == ("2", "0", "5", "2")
    assert (now["credits/day"], now["used today"], now["tpm"], now["tokens left"]) == ("10.500", "2.500", "-", "-")

    # Another option later leaves the ones set before as they were; --clear removes them all.
    ctl(authority, tokens, "rate-limit", org_id, "--user", user_id, "--tpm", "900")
    row = listed(admin, org_id)[user_id]
    assert (row.requests_per_minute, row.tokens_per_minute, row.max_parallel) == (2, 900, 5)
    cleared = ctl(authority, tokens, "rate-limit", org_id, "--user", user_id, "--clear").stdout
    assert f"cleared the limits of member {user_id}" in cleared
    row = listed(admin, org_id)[user_id]
    assert not any(row.HasField(f) for f in ("requests_per_minute", "tokens_per_minute", "max_parallel",
                                             "credits_per_day_millicredits", "credits_per_month_millicredits"))
    holds.append(spend.Reserve(reserve_request(user_id, 1_000, org_id)))
    for hold in holds:
        spend.Release(authority_pb2.ReleaseRequest(reservation_id=hold.reservation_id, reason="done"))


def test_creditctl_rate_limits_of_an_org_a_key_and_an_individual(authority, tokens, world, admin, spend):
    org_id, user_id = world.funded_member(allocation_mc=100_000)
    ctl(authority, tokens, "rate-limit", org_id, "--rpm", "5", "--tpm", "600")
    _, key_id = make_key(admin, user_id, org_id)
    ctl(authority, tokens, "rate-limit", "--key", key_id, "--max-parallel", "1")
    rows = limit_rows(ctl(authority, tokens, "rate-limits", org_id).stdout)
    assert (rows[org_id]["scope"], rows[org_id]["rpm"], rows[org_id]["tpm"]) == ("org", "5", "600")
    assert rows[f"{key_id} ({user_id})"]["max parallel"] == "1"
    by_key = listed(admin, org_id)
    assert by_key[key_id].scope == "key" and by_key[org_id].tokens_per_minute == 600

    hold = spend.Reserve(reserve_request(user_id, 1_000, org_id, api_key_id=key_id, estimated_tokens=500))
    meta = rate_limited(lambda: spend.Reserve(reserve_request(user_id, 1_000, org_id, api_key_id=key_id)))
    assert (meta["limit"], meta["scope"]) == ("max_parallel", "key")
    org_now = limit_rows(ctl(authority, tokens, "rate-limits", org_id).stdout)[org_id]
    # GCRA refills as time passes: a request per 12 s, 10 tokens per s.
    assert org_now["requests left"] == "4" and 100 <= int(org_now["tokens left"]) < 200
    spend.Release(authority_pb2.ReleaseRequest(reservation_id=hold.reservation_id, reason="done"))

    solo = world.user(50_000)
    ctl(authority, tokens, "rate-limit", "--individual", solo, "--rpm", "1")
    spend.Reserve(reserve_request(solo, 1_000))
    meta = rate_limited(lambda: spend.Reserve(reserve_request(solo, 1_000)))
    assert (meta["limit"], meta["scope"]) == ("requests_per_minute", "individual")
    mine = limit_rows(ctl(authority, tokens, "rate-limits", "--individual", solo).stdout)[solo]
    assert (mine["scope"], mine["rpm"], mine["requests left"], mine["open holds"]) == ("individual", "1", "0", "1")


@pytest.mark.parametrize(("args", "code", "named"), [
    (["--rpm", "0"], 1, "requests_per_minute"),
    (["--rpm", "-3"], 1, "requests_per_minute"),
    (["--tpm", "1000000001"], 1, "tokens_per_minute"),
    (["--max-parallel", "100001"], 1, "max_parallel"),
    (["--max-parallel", "many"], 2, "--max-parallel"),
    (["--credits-per-day", "0"], 1, "credits_per_day_millicredits"),
    (["--credits-per-month", "1.0001"], 2, "--credits-per-month"),
    (["--rpm", "5", "--clear"], 1, "clear"),
    ([], 1, "requests_per_minute"),  # nothing to set
    (["--scope-org", "--credits-per-day", "5"], 1, "credits_per_day_millicredits"),  # members only
    (["--not-a-member", "--rpm", "5"], 1, "user_id"),
    (["--individual-too", "--rpm", "5"], 2, "--individual"),
])
def test_creditctl_rate_limit_refuses_bad_values_naming_the_field_and_changes_nothing(
        authority, tokens, world, admin, args, code, named):
    org_id, user_id = world.funded_member(allocation_mc=10_000)
    ctl(authority, tokens, "rate-limit", org_id, "--user", user_id, "--rpm", "7", "--credits-per-month", "3")
    before = listed(admin, org_id)
    scope = ["--user", user_id]
    if args[:1] == ["--scope-org"]:
        scope, args = [], args[1:]
    elif args[:1] == ["--not-a-member"]:
        scope, args = ["--user", world.user()], args[1:]
    elif args[:1] == ["--individual-too"]:
        scope, args = ["--individual", user_id], args[1:]
    wrong = ctl(authority, tokens, "rate-limit", org_id, *scope, *args, check=False)
    assert wrong.returncode == code and named in wrong.stderr, wrong.stderr
    assert listed(admin, org_id) == before
