"""Credits are created once per operator reference (issue 11, item 8).

DESIGN: credits enter only through a payment or an operator's top-up/grant
with a mandatory reference. A grant without a reference added its credits
again on every retry; two grants with one reference arriving together raced
on the unique index and one of them answered INTERNAL. Now the reference is
required, and of simultaneous grants (or top-ups) with one reference exactly
one applies: the others replay it (same amount) or are ALREADY_EXISTS.
"""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from helpers import bad_request
from invariants import assert_invariants

from credit.v1 import admin_pb2, admin_pb2_grpc, authority_pb2

N = 20


@pytest.fixture
async def aio_admin(authority, tokens):
    async with grpc.aio.insecure_channel(authority.addr) as channel:
        stub = admin_pb2_grpc.CreditAdminStub(channel)
        yield stub, (("authorization", f"Bearer {tokens.admin}"),)


async def _outcomes(calls) -> list[str]:
    results = await asyncio.gather(*calls, return_exceptions=True)
    return ["OK" if not isinstance(r, BaseException) else
            r.code().name if isinstance(r, grpc.aio.AioRpcError) else repr(r) for r in results]


async def test_a_grant_needs_a_reference(world, admin, spend, db):
    user = world.user()
    with pytest.raises(grpc.RpcError) as raised:
        admin.GrantIndividualCredits(admin_pb2.GrantIndividualCreditsRequest(
            user_id=user, amount_millicredits=1_000, reason="goodwill"))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = bad_request(raised.value).field_violations
    assert [v.field for v in violations] == ["reference"]
    assert await db.fetchval("SELECT count(*) FROM individual_grants WHERE user_id = $1", user) == 0
    assert await db.fetchval("SELECT count(*) FROM ledger_entries WHERE user_id = $1", user) == 0
    assert spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=user)).limit_millicredits == 0


async def test_a_retried_grant_counts_once_and_the_reference_keeps_its_amount(world, admin, db):
    user = world.user()
    grant = admin_pb2.GrantIndividualCreditsRequest(user_id=user, amount_millicredits=2_000, reference="ticket-7")
    assert admin.GrantIndividualCredits(grant).limit_millicredits == 2_000
    assert admin.GrantIndividualCredits(grant).limit_millicredits == 2_000
    with pytest.raises(grpc.RpcError) as raised:
        admin.GrantIndividualCredits(admin_pb2.GrantIndividualCreditsRequest(
            user_id=user, amount_millicredits=3_000, reference="ticket-7"))
    assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert await db.fetchval("SELECT count(*) FROM ledger_entries WHERE user_id = $1", user) == 1
    await assert_invariants(db)


async def test_simultaneous_grants_with_one_reference_apply_once(world, aio_admin, db):
    stub, meta = aio_admin
    user = world.user()
    request = admin_pb2.GrantIndividualCreditsRequest(user_id=user, amount_millicredits=5_000,
                                                      reference=f"ticket-{uuid.uuid4().hex[:6]}")
    responses = await asyncio.gather(*(stub.GrantIndividualCredits(request, metadata=meta, timeout=30)
                                       for _ in range(N)), return_exceptions=True)
    failed = [r.code().name if isinstance(r, grpc.aio.AioRpcError) else repr(r)
              for r in responses if isinstance(r, BaseException)]
    assert failed == [], "every duplicate replays the one grant"
    assert {r.limit_millicredits for r in responses} == {5_000}
    assert await db.fetchval("SELECT count(*) FROM individual_grants WHERE user_id = $1", user) == 1
    assert await db.fetchval("SELECT count(*) FROM ledger_entries WHERE user_id = $1", user) == 1
    await assert_invariants(db)


async def test_simultaneous_grants_with_one_reference_and_two_amounts(world, aio_admin, db):
    stub, meta = aio_admin
    user = world.user()
    amounts = [1_000, 2_000] * (N // 2)
    outcomes = await _outcomes(stub.GrantIndividualCredits(admin_pb2.GrantIndividualCreditsRequest(
        user_id=user, amount_millicredits=amount, reference="po-77"), metadata=meta, timeout=30) for amount in amounts)
    applied = await db.fetchval("SELECT amount_mc FROM individual_grants WHERE user_id = $1", user)
    assert outcomes == ["OK" if amount == applied else "ALREADY_EXISTS" for amount in amounts]
    assert await db.fetchval("SELECT count(*) FROM ledger_entries WHERE user_id = $1", user) == 1
    await assert_invariants(db)


async def test_simultaneous_top_ups_with_one_purchase_reference_apply_once(world, aio_admin, db):
    stub, meta = aio_admin
    org = world.org()
    amounts = [7_000] * (N - 5) + [9_000] * 5
    outcomes = await _outcomes(stub.TopUpPool(admin_pb2.TopUpPoolRequest(
        org_id=org, amount_millicredits=amount, purchase_reference="inv-1"), metadata=meta, timeout=30)
        for amount in amounts)
    applied = await db.fetchval("SELECT amount_mc FROM pool_top_ups WHERE org_id = $1", org)
    assert outcomes == ["OK" if amount == applied else "ALREADY_EXISTS" for amount in amounts]
    assert await db.fetchval("SELECT count(*) FROM ledger_entries WHERE org_id = $1", org) == 1
    assert await db.fetchval("SELECT total_mc FROM org_pools WHERE org_id = $1", org) == applied
    await assert_invariants(db)
