"""Reserve → Commit / Release, expiry by the sweeper, late and overrun commits."""

from __future__ import annotations

import json
import time

import grpc
import pytest
from helpers import reserve_request
from invariants import assert_invariants

from credit.v1 import admin_pb2, authority_pb2

HOLD = 1_000


def _balance(spend, user, org=""):
    b = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=user, org_id=org))
    return b.limit_millicredits, b.used_millicredits, b.held_millicredits, b.available_millicredits


def _commit(spend, reservation_id, amount):
    return spend.Commit(authority_pb2.CommitRequest(reservation_id=reservation_id, amount_millicredits=amount))


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value.code()


@pytest.mark.parametrize("actual", [HOLD - 400, HOLD, HOLD + 250])
async def test_commit_charges_the_actual_amount(world, spend, db, actual):
    org, user = world.funded_member(allocation_mc=10_000)
    hold = spend.Reserve(reserve_request(user, HOLD, org))
    assert _balance(spend, user, org) == (10_000, 0, HOLD, 10_000 - HOLD)
    result = _commit(spend, hold.reservation_id, actual)
    assert result.charged_millicredits == actual
    assert result.available_millicredits == 10_000 - actual
    assert result.overrun == (actual > HOLD) and not result.late
    assert _balance(spend, user, org) == (10_000, actual, 0, 10_000 - actual)
    row = await db.fetchrow("SELECT * FROM usage_attribution WHERE reservation_id = $1::uuid", hold.reservation_id)
    assert (row["credits_used"], row["overrun"], row["user_id"], row["org_id"]) == (actual, actual > HOLD, user, org)
    await assert_invariants(db)


async def test_overrun_may_drive_available_negative_and_is_flagged(world, spend, db):
    user = world.user(individual_mc=1_000)
    hold = spend.Reserve(reserve_request(user, 1_000))
    result = _commit(spend, hold.reservation_id, 1_500)
    assert result.overrun and result.available_millicredits == -500
    assert _code(lambda: spend.Reserve(reserve_request(user, 1))) == grpc.StatusCode.RESOURCE_EXHAUSTED
    await assert_invariants(db)


async def test_repeated_commit_with_the_same_amount_returns_the_first_result(world, spend, db):
    org, user = world.funded_member(allocation_mc=10_000)
    hold = spend.Reserve(reserve_request(user, HOLD, org))
    first = _commit(spend, hold.reservation_id, 700)
    again = _commit(spend, hold.reservation_id, 700)
    assert (again.charged_millicredits, again.available_millicredits) == (700, first.available_millicredits)
    assert _balance(spend, user, org)[1] == 700
    assert _code(lambda: _commit(spend, hold.reservation_id, 701)) == grpc.StatusCode.FAILED_PRECONDITION
    assert await db.fetchval("SELECT count(*) FROM usage_attribution WHERE reservation_id = $1::uuid",
                             hold.reservation_id) == 1
    await assert_invariants(db)


async def test_release_returns_the_hold_and_charges_nothing(world, spend, db):
    org, user = world.funded_member(allocation_mc=10_000)
    hold = spend.Reserve(reserve_request(user, HOLD, org))
    spend.Release(authority_pb2.ReleaseRequest(reservation_id=hold.reservation_id, reason="upstream failed"))
    assert _balance(spend, user, org) == (10_000, 0, 0, 10_000)
    spend.Release(authority_pb2.ReleaseRequest(reservation_id=hold.reservation_id))  # idempotent
    assert _balance(spend, user, org) == (10_000, 0, 0, 10_000)
    assert await db.fetchval("SELECT count(*) FROM usage_attribution WHERE reservation_id = $1::uuid",
                             hold.reservation_id) == 0
    await assert_invariants(db)


async def test_release_after_commit_and_commit_after_release_fail(world, spend, db):
    org, user = world.funded_member(allocation_mc=10_000)
    committed = spend.Reserve(reserve_request(user, HOLD, org))
    _commit(spend, committed.reservation_id, 10)
    assert _code(lambda: spend.Release(authority_pb2.ReleaseRequest(
        reservation_id=committed.reservation_id))) == grpc.StatusCode.FAILED_PRECONDITION
    released = spend.Reserve(reserve_request(user, HOLD, org))
    spend.Release(authority_pb2.ReleaseRequest(reservation_id=released.reservation_id))
    assert _code(lambda: _commit(spend, released.reservation_id, 10)) == grpc.StatusCode.FAILED_PRECONDITION
    assert _balance(spend, user, org) == (10_000, 10, 0, 9_990)
    await assert_invariants(db)


async def test_expired_hold_is_released_by_the_sweeper_and_a_late_commit_is_still_charged(world, spend, db):
    org, user = world.funded_member(allocation_mc=10_000)
    hold = spend.Reserve(reserve_request(user, HOLD, org, ttl_seconds=1))
    assert hold.expires_at.seconds > 0
    deadline = time.monotonic() + 15
    while _balance(spend, user, org)[2] != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _balance(spend, user, org) == (10_000, 0, 0, 10_000)
    assert await db.fetchval("SELECT status FROM reservations WHERE reservation_id = $1::uuid",
                             hold.reservation_id) == "expired"
    assert await db.fetchval("SELECT kind FROM ledger_entries WHERE reservation_id = $1::uuid ORDER BY entry_id DESC "
                             "LIMIT 1", hold.reservation_id) == "expiry"

    late = _commit(spend, hold.reservation_id, 800)
    assert late.late and late.charged_millicredits == 800
    assert _balance(spend, user, org) == (10_000, 800, 0, 9_200)
    row = await db.fetchrow("SELECT late, credits_used FROM usage_attribution WHERE reservation_id = $1::uuid",
                            hold.reservation_id)
    assert row["late"] and row["credits_used"] == 800
    # Releasing an expired hold is a no-op, not an error.
    await assert_invariants(db)


async def test_ttl_is_capped_by_the_server(world, spend):
    org, user = world.funded_member(allocation_mc=10_000)
    hold = spend.Reserve(reserve_request(user, HOLD, org, ttl_seconds=10**6))
    ttl = hold.expires_at.seconds - time.time()
    assert 3500 < ttl <= 3600


async def test_commit_metadata_lands_on_the_attribution_row(world, spend, db):
    org, user = world.funded_member(allocation_mc=10_000)
    request = reserve_request(user, HOLD, org, service_name="gpt-4o")
    request.metadata.update({"power_level": "balanced"})
    hold = spend.Reserve(request)
    commit = authority_pb2.CommitRequest(reservation_id=hold.reservation_id, amount_millicredits=15)
    commit.metadata.update({"provider": "openai", "tokens_used": 1523, "cost": 0.015})
    spend.Commit(commit)
    row = await db.fetchrow("SELECT * FROM usage_attribution WHERE reservation_id = $1::uuid", hold.reservation_id)
    assert row["service_name"] == "gpt-4o" and row["request_id"] == request.request_id
    assert json.loads(row["request_metadata"]) == {"power_level": "balanced", "provider": "openai", "tokens_used": 1523,
                                       "cost": 0.015}


def test_usage_query_groups_by_model_user_service_type_and_day(world, spend, admin):
    org, alice = world.funded_member(allocation_mc=100_000, pool_mc=150_000)
    bob = world.user()
    world.member(org, bob, 50_000)
    for user, model, amount in ((alice, "m-a", 100), (alice, "m-b", 200), (bob, "m-a", 300)):
        hold = spend.Reserve(reserve_request(user, 1_000, org, service_name=model))
        _commit(spend, hold.reservation_id, amount)
    by_model = admin.QueryUsage(admin_pb2.QueryUsageRequest(org_id=org, group_by=admin_pb2.USAGE_GROUP_BY_MODEL))
    assert {(g.key, g.requests, g.credits_used_millicredits) for g in by_model.groups} == {("m-a", 2, 400),
                                                                                          ("m-b", 1, 200)}
    assert (by_model.total_millicredits, by_model.total_requests) == (600, 3)
    by_user = admin.QueryUsage(admin_pb2.QueryUsageRequest(org_id=org, group_by=admin_pb2.USAGE_GROUP_BY_USER))
    assert {(g.key, g.credits_used_millicredits) for g in by_user.groups} == {(alice, 300), (bob, 300)}
    by_day = admin.QueryUsage(admin_pb2.QueryUsageRequest(org_id=org, group_by=admin_pb2.USAGE_GROUP_BY_DAY))
    assert len(by_day.groups) == 1 and by_day.groups[0].requests == 3
    by_type = admin.QueryUsage(admin_pb2.QueryUsageRequest(
        org_id=org, group_by=admin_pb2.USAGE_GROUP_BY_SERVICE_TYPE))
    assert [(g.key, g.requests) for g in by_type.groups] == [("llm_inference", 3)]
    rows = admin.QueryUsage(admin_pb2.QueryUsageRequest(org_id=org, user_id=bob))
    assert [(r.user_id, r.service_name, r.credits_used_millicredits) for r in rows.records] == [(bob, "m-a", 300)]
    none = admin.QueryUsage(admin_pb2.QueryUsageRequest(org_id=org, model="m-zzz"))
    assert none.total_requests == 0 and not none.records


def test_a_retried_reserve_reports_whether_the_hold_is_still_open(world, spend):
    org, user = world.funded_member(allocation_mc=10_000)
    request = reserve_request(user, HOLD, org)
    first = spend.Reserve(request)
    assert not first.replayed and first.status == "held"
    _commit(spend, first.reservation_id, 5)
    again = spend.Reserve(request)
    assert again.replayed and again.status == "committed" and again.reservation_id == first.reservation_id
