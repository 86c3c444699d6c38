"""Reserve never lets holds and usage exceed the limit, under real concurrency."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from helpers import error_info, reserve_request
from invariants import assert_invariants

from credit.v1 import authority_pb2, types_pb2

CALLS = 500
AMOUNT = 1_000
K = 37


async def _race(aio_spend, user_id: str, org_id: str) -> tuple[list, list]:
    async def one(i: int):
        try:
            return await aio_spend.Reserve(reserve_request(user_id, AMOUNT, org_id, request_id=f"race-{user_id}-{i}"))
        except grpc.aio.AioRpcError as error:
            return error

    results = await asyncio.gather(*(one(i) for i in range(CALLS)))
    granted = [r for r in results if isinstance(r, authority_pb2.ReserveResponse)]
    refused = [r for r in results if not isinstance(r, authority_pb2.ReserveResponse)]
    return granted, refused


def _assert_exactly_k(granted, refused, funding_kind):
    assert len(granted) == K
    assert len(refused) == CALLS - K
    assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    for error in refused:
        info = error_info(error)
        assert info is not None and info.reason == "INSUFFICIENT_CREDITS"
        assert int(info.metadata["requested"]) == AMOUNT
        assert int(info.metadata["available"]) < AMOUNT
    assert len({g.reservation_id for g in granted}) == K
    assert {g.funding.kind for g in granted} == {funding_kind}
    assert sorted(g.available_millicredits for g in granted) == [AMOUNT * i + 999 for i in range(K)]


async def test_concurrent_reserves_never_exceed_allocation(world, aio_spend, spend, db):
    org_id, user_id = world.funded_member(allocation_mc=K * AMOUNT + 999)
    granted, refused = await _race(aio_spend, user_id, org_id)
    _assert_exactly_k(granted, refused, types_pb2.Funding.ORG)
    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=user_id, org_id=org_id))
    assert (balance.held_millicredits, balance.available_millicredits) == (K * AMOUNT, 999)
    await assert_invariants(db)


async def test_concurrent_reserves_never_exceed_individual_balance(world, aio_spend, spend, db):
    user_id = world.user(individual_mc=K * AMOUNT + 999)
    granted, refused = await _race(aio_spend, user_id, "")
    _assert_exactly_k(granted, refused, types_pb2.Funding.INDIVIDUAL)
    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=user_id))
    assert (balance.held_millicredits, balance.available_millicredits) == (K * AMOUNT, 999)
    await assert_invariants(db)


async def test_concurrent_reserve_commit_release_mix_keeps_invariants(world, aio_spend, db):
    org_id, user_id = world.funded_member(allocation_mc=200 * AMOUNT)

    async def cycle(i: int):
        try:
            hold = await aio_spend.Reserve(reserve_request(user_id, AMOUNT, org_id))
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            return 0
        if i % 3 == 0:
            await aio_spend.Release(authority_pb2.ReleaseRequest(reservation_id=hold.reservation_id))
            return 0
        charged = AMOUNT // 2 if i % 3 == 1 else AMOUNT + 10  # below the hold, or an overrun
        await aio_spend.Commit(authority_pb2.CommitRequest(reservation_id=hold.reservation_id,
                                                           amount_millicredits=charged))
        return charged

    charged = sum(await asyncio.gather(*(cycle(i) for i in range(300))))
    used = await db.fetchval("SELECT used_mc FROM allocations WHERE org_id = $1 AND user_id = $2", org_id, user_id)
    assert used == charged
    await assert_invariants(db)


async def test_same_request_id_concurrently_makes_one_hold(world, aio_spend, spend, db):
    org_id, user_id = world.funded_member(allocation_mc=100 * AMOUNT)
    request = reserve_request(user_id, AMOUNT, org_id, request_id=f"dup-{user_id}")
    results = await asyncio.gather(*(aio_spend.Reserve(request) for _ in range(50)))
    assert len({r.reservation_id for r in results}) == 1
    assert await db.fetchval("SELECT count(*) FROM reservations WHERE request_id = $1", request.request_id) == 1
    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=user_id, org_id=org_id))
    assert balance.held_millicredits == AMOUNT

    retry = spend.Reserve(request)
    assert retry.reservation_id == results[0].reservation_id
    assert retry.reserved_millicredits == AMOUNT
    assert retry.replayed and retry.status == "held"
    assert sum(not r.replayed for r in results) == 1

    other = authority_pb2.ReserveRequest()
    other.CopyFrom(request)
    other.amount_millicredits = AMOUNT * 2
    with pytest.raises(grpc.RpcError) as raised:
        spend.Reserve(other)
    assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=user_id, org_id=org_id)).held_millicredits == AMOUNT
    await assert_invariants(db)


def test_request_ids_are_scoped_per_caller(world, spend, channel, tokens):
    from conftest import Stub

    from credit.v1 import authority_pb2_grpc

    other = Stub(authority_pb2_grpc.CreditAuthorityStub(channel), tokens.other_spend)
    org_id, user_id = world.funded_member(allocation_mc=10 * AMOUNT)
    request = reserve_request(user_id, AMOUNT, org_id, request_id="shared-id-" + user_id)
    first = spend.Reserve(request)
    second = other.Reserve(request)
    assert first.reservation_id != second.reservation_id
    # A caller cannot finalize another caller's reservation.
    with pytest.raises(grpc.RpcError) as raised:
        other.Commit(authority_pb2.CommitRequest(reservation_id=first.reservation_id, amount_millicredits=1))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
