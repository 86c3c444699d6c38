"""A flood of made-up platform secrets (issue 17): an authority process looks up at most
CREDIT_PLATFORM_UNKNOWN_LOOKUPS_PER_SECOND secrets it has never seen valid (burst: two seconds' worth) and
refuses the rest UNAVAILABLE without a query, while a credential it has seen valid keeps working throughout,
its cache entry refreshed as it ends. Against a real authority process and database."""

from __future__ import annotations

import asyncio
import secrets
import time

import grpc
import pytest
from conftest import AuthorityProcess, uid

from credit.v1 import admin_pb2, authority_pb2, authority_pb2_grpc

RATE = 5  # lookups a second of secrets never seen valid; burst 10


@pytest.fixture(scope="module")
def flooded(database_url, tokens):
    process = AuthorityProcess(database_url, tokens, {"CREDIT_PLATFORM_UNKNOWN_LOOKUPS_PER_SECOND": str(RATE),
                                                      "CREDIT_PLATFORM_CACHE_SECONDS": "0.2"}).start()
    yield process
    process.stop()


async def test_made_up_secrets_cost_a_bounded_number_of_lookups_and_a_valid_credential_keeps_working(
        flooded, world, admin):
    org, user = world.funded_member(allocation_mc=10_000)
    secret = admin.CreatePlatformCredential(admin_pb2.CreatePlatformCredentialRequest(
        name=uid("flooded"), org_ids=[org], roles=["spend"])).secret
    balance = authority_pb2.GetBalanceRequest(user_id=user, org_id=org)
    async with grpc.aio.insecure_channel(flooded.addr) as channel:
        stub = authority_pb2_grpc.CreditAuthorityStub(channel)

        async def call(token: str) -> grpc.StatusCode:
            try:
                await stub.GetBalance(balance, metadata=(("authorization", f"Bearer {token}"),), timeout=30)
                return grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                return error.code()

        assert await call(secret) == grpc.StatusCode.OK  # seen valid once
        started = time.monotonic()
        garbage: list[grpc.StatusCode] = []
        mine: list[grpc.StatusCode] = []
        done = asyncio.Event()

        async def flood() -> None:  # made-up secrets without pause, until the valid calls are done
            while not done.is_set():
                garbage.append(await call("cp_" + secrets.token_urlsafe(32)))

        async def valid() -> None:  # 10 calls 0.25 s apart: the 0.2 s entry ends before each
            for _ in range(10):
                await asyncio.sleep(0.25)
                mine.append(await call(secret))
            done.set()

        await asyncio.gather(valid(), *(flood() for _ in range(20)))
        elapsed = time.monotonic() - started
    assert set(mine) == {grpc.StatusCode.OK}
    looked_up = garbage.count(grpc.StatusCode.UNAUTHENTICATED)
    refused = garbage.count(grpc.StatusCode.UNAVAILABLE)
    assert looked_up + refused == len(garbage), set(garbage)
    assert refused > 0 and 0 < looked_up <= 2 * RATE + RATE * elapsed + 1, (looked_up, refused, elapsed)
    # The flood ends; a made-up secret is looked up again (UNAUTHENTICATED), once the bucket refills.
    await asyncio.sleep(1.0)
    async with grpc.aio.insecure_channel(flooded.addr) as channel:
        stub = authority_pb2_grpc.CreditAuthorityStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.GetBalance(balance, metadata=(("authorization", "Bearer cp_" + secrets.token_urlsafe(32)),))
        assert unknown.value.code() == grpc.StatusCode.UNAUTHENTICATED
