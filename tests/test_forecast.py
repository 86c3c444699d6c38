"""Forecasts (CreditAdmin.GetForecast, README "Statements and forecasts"), on a history the test writes with
known timestamps: committed charges inserted with SQL at chosen times (reservation, attribution row, ledger
entry and the account row's used, so tests/invariants.py still holds). The burn rate is the usage charged in
the trailing window ÷ its days, rounded up; the run-out time is computed_at + remaining ÷ rate, to the
microsecond."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import asyncpg
import grpc
import pytest
from conftest import Stub
from invariants import violations

from credit.v1 import admin_pb2, admin_pb2_grpc
from credit_service.reports import DEFAULT_WINDOW_DAYS, MAX_WINDOW_DAYS

DAY = timedelta(days=1)
MINUTE = timedelta(minutes=1)
MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class Charge:
    """A committed charge of `amount` millicredits, `ago` before it is written."""

    user_id: str
    org_id: str | None
    amount: int
    ago: timedelta


async def write_charge(conn: asyncpg.Connection, charge: Charge) -> None:
    """One committed call, stamped `ago` in the past, written as the authority writes one (without its hold:
    the hold and its release would add nothing to used or held)."""
    reservation, request = uuid.uuid4(), uuid.uuid4().hex
    kind, account = ("org", "allocation") if charge.org_id else ("individual", "individual")
    async with conn.transaction():
        at = await conn.fetchval("SELECT clock_timestamp() - $1::interval", charge.ago)
        await conn.execute(
            """INSERT INTO reservations (reservation_id, caller, request_id, request_hash, user_id, funding_kind,
                                         org_id, amount_mc, status, service_type, service_name, created_at,
                                         expires_at, finalized_at, charged_mc)
               VALUES ($1, 'forecast-test', $2, '\\x00', $3, $4, $5, $6, 'committed', 'llm_inference', 'demo-chat',
                       $7, $7::timestamptz + interval '10 minutes', $7, $6)""",
            reservation, request, charge.user_id, kind, charge.org_id, charge.amount, at)
        await conn.execute(
            """INSERT INTO usage_attribution (reservation_id, org_id, user_id, funding_kind, service_type,
                                              service_name, credits_used, request_id, created_at)
               VALUES ($1, $2, $3, $4, 'llm_inference', 'demo-chat', $5, $6, $7)""",
            reservation, charge.org_id, charge.user_id, kind, charge.amount, request, at)
        await conn.execute(
            """INSERT INTO ledger_entries (account, org_id, user_id, kind, delta_used_mc, reservation_id, created_at)
               VALUES ($1, $2, $3, 'charge', $4, $5, $6)""",
            account, charge.org_id, charge.user_id, charge.amount, reservation, at)
        if charge.org_id:
            await conn.execute("UPDATE allocations SET used_mc = used_mc + $3 WHERE org_id = $1 AND user_id = $2",
                               charge.org_id, charge.user_id, charge.amount)
        else:
            await conn.execute("UPDATE individual_balances SET used_mc = used_mc + $2 WHERE user_id = $1",
                               charge.user_id, charge.amount)


def write_charges(database_url: str, charges: list[Charge]) -> None:
    """write_charge for callers outside an event loop."""
    async def run() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            for charge in charges:
                await write_charge(conn, charge)
        finally:
            await conn.close()

    asyncio.run(run())


def forecast(stub: Stub, org: str = "", user: str = "", window_days: int = 0) -> admin_pb2.Forecast:
    return stub.GetForecast(admin_pb2.GetForecastRequest(account=admin_pb2.AccountRef(org_id=org, user_id=user),
                                                         window_days=window_days))


def in_window(charges: list[Charge], days: int) -> int:
    return sum(c.amount for c in charges if c.ago < days * DAY)


def assert_line(line: admin_pb2.ForecastLine, computed_at: datetime, remaining: int, used: int, days: int) -> None:
    """The figures of one line, recomputed here from what the test wrote and the forecast's computed_at."""
    rate = -(-used // days)  # rounded up
    assert (line.remaining_millicredits, line.used_in_window_millicredits, line.burn_rate_millicredits_per_day) == \
        (remaining, used, rate)
    if rate == 0:
        assert not line.HasField("runs_out_at")
    else:
        expected = computed_at + timedelta(microseconds=max(remaining, 0) * (DAY // MICROSECOND) // rate)
        assert line.runs_out_at.ToDatetime(timezone.utc) == expected


async def test_burn_rate_and_run_out_of_a_pool_and_its_allocations(db, world, admin):
    pool = 100_000
    org = world.org(pool)
    busy, steady, idle = world.user(), world.user(), world.user()
    limits = {busy: 40_000, steady: 30_000, idle: 10_000}
    for user, limit in limits.items():
        world.member(org, user, limit)
    charges = [Charge(busy, org, 7_000, DAY), Charge(busy, org, 3_001, 3 * DAY), Charge(busy, org, 9_000, 10 * DAY),
               Charge(steady, org, 2_000, DEFAULT_WINDOW_DAYS * DAY - MINUTE),  # just inside the window
               Charge(steady, org, 5_000, DEFAULT_WINDOW_DAYS * DAY + MINUTE),  # just outside
               Charge(idle, org, 1_000, 40 * DAY)]
    for charge in charges:
        await write_charge(db, charge)
    assert not await violations(db)

    for asked, days in ((0, DEFAULT_WINDOW_DAYS), (DEFAULT_WINDOW_DAYS, DEFAULT_WINDOW_DAYS), (30, 30),
                        (MAX_WINDOW_DAYS, MAX_WINDOW_DAYS)):
        f = forecast(admin, org=org, window_days=asked)
        at = f.computed_at.ToDatetime(timezone.utc)
        assert (f.window_days, f.account.org_id, f.account.user_id) == (days, org, "")
        assert_line(f.total, at, pool - sum(c.amount for c in charges),
                    in_window(charges, days), days)
        assert f.total.user_id == ""
        assert [m.user_id for m in f.members] == list(limits)
        for line in f.members:
            mine = [c for c in charges if c.user_id == line.user_id]
            assert_line(line, at, limits[line.user_id] - sum(c.amount for c in mine), in_window(mine, days), days)

    # The remaining figures are the account rows'.
    org_row = admin.GetOrganization(admin_pb2.GetOrganizationRequest(org_id=org))
    f = forecast(admin, org=org)
    assert f.total.remaining_millicredits == org_row.pool_total_millicredits - org_row.used_millicredits
    members = admin.ListMembers(admin_pb2.ListMembersRequest(org_id=org)).members
    assert {m.user_id: m.allocation_millicredits - m.used_millicredits for m in members} == \
        {m.user_id: m.remaining_millicredits for m in f.members}


async def test_an_individual_runs_out_now_when_nothing_remains_and_never_without_usage(db, world, admin):
    granted = 12_345
    spent, unused = world.user(granted), world.user(granted)
    await write_charge(db, Charge(spent, None, granted, 2 * DAY))  # all of it, two days ago
    assert not await violations(db)
    f = forecast(admin, user=spent)
    at = f.computed_at.ToDatetime(timezone.utc)
    assert_line(f.total, at, 0, granted, DEFAULT_WINDOW_DAYS)
    assert f.total.runs_out_at.ToDatetime(timezone.utc) == at  # nothing remains: now
    assert (f.total.user_id, list(f.members)) == (spent, [])

    quiet = forecast(admin, user=unused, window_days=1)
    assert_line(quiet.total, quiet.computed_at.ToDatetime(timezone.utc), granted, 0, 1)
    assert not quiet.total.HasField("runs_out_at")

    await write_charge(db, Charge(unused, None, 1, DAY + MINUTE))  # outside a one-day window, inside two
    assert forecast(admin, user=unused, window_days=1).total.burn_rate_millicredits_per_day == 0
    two = forecast(admin, user=unused, window_days=2)
    assert_line(two.total, two.computed_at.ToDatetime(timezone.utc), granted - 1, 1, 2)


async def test_bad_forecast_requests_are_refused(db, world, admin, channel, tokens):
    pool = 1_000
    org = world.org(pool)
    user = world.user()
    world.member(org, user, 500)
    refused = {
        grpc.StatusCode.INVALID_ARGUMENT: [dict(org=org, window_days=MAX_WINDOW_DAYS + 1),
                                           dict(org=org, window_days=-1), dict(org=org, user=user), dict()],
        grpc.StatusCode.NOT_FOUND: [dict(org=f"no-such-{uuid.uuid4().hex[:6]}"),
                                    dict(user=f"no-such-{uuid.uuid4().hex[:6]}")],
    }
    for code, requests in refused.items():
        for request in requests:
            with pytest.raises(grpc.RpcError) as raised:
                forecast(admin, **request)
            assert raised.value.code() == code, request
    reader = Stub(admin_pb2_grpc.CreditAdminStub(channel), tokens.read)
    assert forecast(reader, org=org).total.remaining_millicredits == pool
    spender = Stub(admin_pb2_grpc.CreditAdminStub(channel), tokens.other_spend)  # spend only
    with pytest.raises(grpc.RpcError) as raised:
        forecast(spender, org=org)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
