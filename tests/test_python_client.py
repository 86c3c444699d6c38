"""credit_client (the Python client, clients/python) against the live authority: one block bills one call."""

from __future__ import annotations

import uuid

import grpc
import pytest
from conftest import free_port
from invariants import assert_invariants

from credit.v1 import admin_pb2
from credit_client import (
    AlreadyExists,
    AlreadyFinalized,
    AuthorityUnavailable,
    CommitFailed,
    CreditClient,
    FailedPrecondition,
    Funding,
    InsufficientCredits,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
)


class LoseFirstAnswer(grpc.aio.UnaryUnaryClientInterceptor):
    """Lets the first call of `method` reach the server, then reports UNAVAILABLE to the
    caller as if the answer were lost on the way back."""

    def __init__(self, method: str, times: int = 1):
        self.method = method
        self.remaining = times
        self.calls = 0

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        method = client_call_details.method
        method = method.decode() if isinstance(method, bytes) else method
        call = await continuation(client_call_details, request)
        if method.endswith("/" + self.method):
            self.calls += 1
            if self.remaining:
                self.remaining -= 1
                await call  # the server did the work
                raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                           details="injected: answer lost")
        return call


@pytest.fixture
async def client(authority, tokens):
    async with CreditClient(authority.addr, tokens.spend, initial_backoff=0.01) as c:
        yield c


def rid() -> str:
    return f"py-{uuid.uuid4().hex}"


async def test_hold_commits_the_actual_amount(client, world, db):
    org_id, user_id = world.funded_member(allocation_mc=10_000)
    request_id = rid()
    async with client.hold(user_id=user_id, org_id=org_id, amount_millicredits=1_000, request_id=request_id,
                           service_name="gpt-4o", metadata={"feature": "summaries"}) as hold:
        assert hold.reserved_millicredits == 1_000 and hold.funding == Funding("org", org_id)
        inside = await client.balance(user_id, org_id)
        assert (inside.held_millicredits, inside.available_millicredits) == (1_000, 9_000)
        hold.commit(370, metadata={"prompt_tokens": 120, "completion_tokens": 40})
    assert hold.result.charged_millicredits == 370
    assert hold.result.available_millicredits == 9_630
    assert not hold.result.overrun and not hold.result.late
    balance = await client.balance(user_id, org_id)
    assert (balance.limit_millicredits, balance.used_millicredits, balance.held_millicredits,
            balance.available_millicredits) == (10_000, 370, 0, 9_630)
    row = await db.fetchrow("SELECT * FROM usage_attribution WHERE reservation_id = $1::uuid", hold.reservation_id)
    assert (row["credits_used"], row["request_id"], row["service_name"]) == (370, request_id, "gpt-4o")
    assert '"completion_tokens": 40' in row["request_metadata"] and '"feature": "summaries"' in row["request_metadata"]
    await assert_invariants(db)


async def test_setting_the_amount_as_an_attribute_works_too(client, world):
    user_id = world.user(individual_mc=5_000)
    async with client.hold(user_id=user_id, amount_millicredits=2_000) as hold:
        hold.actual_millicredits = 2_500  # above the hold: charged in full, flagged
    assert (hold.result.charged_millicredits, hold.result.overrun) == (2_500, True)
    assert (await client.balance(user_id)).used_millicredits == 2_500


async def test_nothing_set_commits_the_full_hold(client, world):
    user_id = world.user(individual_mc=5_000)
    async with client.hold(user_id=user_id, amount_millicredits=1_200) as hold:
        pass
    assert hold.result.charged_millicredits == 1_200
    balance = await client.balance(user_id)
    assert (balance.used_millicredits, balance.held_millicredits) == (1_200, 0)


async def test_release_inside_the_block_voids_the_hold(client, world, db):
    user_id = world.user(individual_mc=5_000)
    async with client.hold(user_id=user_id, amount_millicredits=1_200) as hold:
        hold.release("served from cache")
    assert hold.released and hold.result is None
    balance = await client.balance(user_id)
    assert (balance.used_millicredits, balance.held_millicredits, balance.available_millicredits) == (0, 0, 5_000)
    row = await db.fetchrow("SELECT status, release_reason FROM reservations WHERE reservation_id = $1::uuid",
                            hold.reservation_id)
    assert (row["status"], row["release_reason"]) == ("released", "served from cache")


async def test_an_exception_in_the_block_releases_the_hold(client, world, db):
    org_id, user_id = world.funded_member(allocation_mc=10_000)
    with pytest.raises(RuntimeError, match="provider exploded"):
        async with client.hold(user_id=user_id, org_id=org_id, amount_millicredits=4_000) as hold:
            assert (await client.balance(user_id, org_id)).held_millicredits == 4_000
            hold.commit(100)  # set, but the block fails afterwards: released, not charged
            raise RuntimeError("provider exploded\nwith a newline")
    assert hold.released and hold.result is None
    balance = await client.balance(user_id, org_id)
    assert (balance.used_millicredits, balance.held_millicredits, balance.available_millicredits) == (0, 0, 10_000)
    row = await db.fetchrow("SELECT status, release_reason FROM reservations WHERE reservation_id = $1::uuid",
                            hold.reservation_id)
    assert row["status"] == "released"
    assert row["release_reason"] == "RuntimeError: provider exploded with a newline"
    assert await db.fetchval("SELECT count(*) FROM usage_attribution WHERE reservation_id = $1::uuid",
                             hold.reservation_id) == 0
    await assert_invariants(db)


async def test_insufficient_credits_raises_with_the_numbers(client, world):
    user_id = world.user(individual_mc=250)
    ran = False
    with pytest.raises(InsufficientCredits) as raised:
        async with client.hold(user_id=user_id, amount_millicredits=1_000):
            ran = True
    assert not ran, "the block must not run when the credits do not fit"
    error = raised.value
    assert (error.available, error.requested, error.funding) == (250, 1_000, "individual")
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED

    org_id, member = world.funded_member(allocation_mc=700)
    with pytest.raises(InsufficientCredits) as raised:
        async with client.hold(user_id=member, amount_millicredits=701):
            pass
    assert (raised.value.available, raised.value.requested, raised.value.funding) == (700, 701, f"org:{org_id}")

    check = await client.check(user_id, 1_000)
    assert (check.allowed, check.available_millicredits, str(check.funding)) == (False, 250, "individual")
    assert (await client.balance(user_id)).held_millicredits == 0


async def test_a_rate_limit_raises_rate_limited_with_the_limit_and_the_delay_never_insufficient_credits(
        client, world, admin):
    org_id, user_id = world.funded_member(allocation_mc=1_000)
    admin.SetRateLimit(admin_pb2.SetRateLimitRequest(org_id=org_id, user_id=user_id, requests_per_minute=1,
                                                     tokens_per_minute=600))
    with pytest.raises(InsufficientCredits):  # too much: insufficient credits, whatever the limits say
        await client.reserve(user_id=user_id, org_id=org_id, amount_millicredits=5_000)
    with pytest.raises(RateLimited) as raised:  # alone larger than the tokens per minute: waiting will not help
        await client.reserve(user_id=user_id, org_id=org_id, amount_millicredits=10, estimated_tokens=601)
    assert (raised.value.limit, raised.value.exceeds, raised.value.retry_after) == ("tokens_per_minute", True, None)
    async with client.hold(user_id=user_id, org_id=org_id, amount_millicredits=100, estimated_tokens=500) as hold:
        hold.commit(40, tokens=30)  # the real count: 470 of the 500 estimated come back
    [limit] = admin.ListRateLimits(admin_pb2.ListRateLimitsRequest(org_id=org_id, user_id=user_id)).limits
    assert 600 - 30 <= limit.tokens_remaining <= 600 - 30 + 20  # plus what came back meanwhile (10 a second)
    with pytest.raises(RateLimited) as raised:
        await client.reserve(user_id=user_id, org_id=org_id, amount_millicredits=10)
    error = raised.value
    assert not isinstance(error, InsufficientCredits) and error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (error.limit, error.value, error.scope, error.window, error.exceeds) == (
        "requests_per_minute", 1, "member", "minute", False)
    assert error.retry_after is not None and 55 < error.retry_after <= 60


async def test_a_lost_reserve_answer_is_retried_without_a_second_hold(authority, tokens, world, db):
    org_id, user_id = world.funded_member(allocation_mc=10_000)
    lose = LoseFirstAnswer("Reserve")
    async with grpc.aio.insecure_channel(authority.addr, interceptors=[lose]) as channel:
        client = CreditClient(token=tokens.spend, channel=channel, initial_backoff=0.01)
        request_id = rid()
        async with client.hold(user_id=user_id, org_id=org_id, amount_millicredits=3_000,
                               request_id=request_id) as hold:
            assert lose.calls == 2, "the Reserve was retried"
            assert hold.reservation.replayed and hold.reservation.status == "held"
            balance = await client.balance(user_id, org_id)
            assert (balance.held_millicredits, balance.available_millicredits) == (3_000, 7_000)
            hold.commit(1_000)
        balance = await client.balance(user_id, org_id)
    assert await db.fetchval("SELECT count(*) FROM reservations WHERE request_id = $1", request_id) == 1
    assert (balance.used_millicredits, balance.held_millicredits) == (1_000, 0)
    await assert_invariants(db)


async def test_a_lost_commit_answer_is_retried_and_charged_once(authority, tokens, world, db):
    user_id = world.user(individual_mc=10_000)
    lose = LoseFirstAnswer("Commit")
    async with grpc.aio.insecure_channel(authority.addr, interceptors=[lose]) as channel:
        client = CreditClient(token=tokens.spend, channel=channel, initial_backoff=0.01)
        async with client.hold(user_id=user_id, amount_millicredits=3_000) as hold:
            hold.commit(2_222)
        assert lose.calls == 2
        assert hold.result.charged_millicredits == 2_222
        balance = await client.balance(user_id)
    assert (balance.used_millicredits, balance.held_millicredits, balance.available_millicredits) == (2_222, 0, 7_778)
    assert await db.fetchval("SELECT count(*) FROM usage_attribution WHERE reservation_id = $1::uuid",
                             hold.reservation_id) == 1
    await assert_invariants(db)


async def test_the_same_request_id_never_holds_twice(client, world, db):
    org_id, user_id = world.funded_member(allocation_mc=10_000)
    request_id = rid()
    async with client.hold(user_id=user_id, org_id=org_id, amount_millicredits=2_000, request_id=request_id) as first:
        # A retried operation (e.g. after a crash) with the same request_id picks the open hold up again.
        async with client.hold(user_id=user_id, org_id=org_id, amount_millicredits=2_000,
                               request_id=request_id) as again:
            assert again.reservation_id == first.reservation_id and again.reservation.replayed
            assert (await client.balance(user_id, org_id)).held_millicredits == 2_000
            again.commit(500)
        first.commit(500)  # Commit is idempotent per reservation: same amount, same result
    assert first.result == again.result
    # After the commit, the same request_id is refused: the work was already billed.
    with pytest.raises(AlreadyFinalized) as raised:
        async with client.hold(user_id=user_id, org_id=org_id, amount_millicredits=2_000, request_id=request_id):
            pytest.fail("the block must not run")
    assert (raised.value.status, raised.value.reservation_id) == ("committed", first.reservation_id)
    # The same request_id with other arguments is a different request: ALREADY_EXISTS.
    with pytest.raises(AlreadyExists):
        async with client.hold(user_id=user_id, org_id=org_id, amount_millicredits=9, request_id=request_id):
            pass
    balance = await client.balance(user_id, org_id)
    assert (balance.used_millicredits, balance.held_millicredits) == (500, 0)
    assert await db.fetchval("SELECT count(*) FROM reservations WHERE request_id = $1", request_id) == 1
    await assert_invariants(db)


async def test_a_failed_commit_raises_commit_failed_with_what_to_retry(client, world):
    user_id = world.user(individual_mc=5_000)
    with pytest.raises(CommitFailed) as raised:
        async with client.hold(user_id=user_id, amount_millicredits=1_000) as hold:
            await client.release(hold.reservation_id, "someone else released it")
            hold.commit(10)
    assert (raised.value.reservation_id, raised.value.amount_millicredits) == (hold.reservation_id, 10)
    assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert isinstance(raised.value.__cause__, FailedPrecondition)
    assert (await client.balance(user_id)).used_millicredits == 0


async def test_errors_map_to_exceptions(client, authority, tokens, world):
    user_id = world.user(individual_mc=1_000)
    other_org = world.org(pool_mc=1_000)
    with pytest.raises(PermissionDenied):
        await client.check(user_id, 10, org_id=other_org)
    with pytest.raises(NotFound):
        await client.balance(f"nobody-{uuid.uuid4().hex[:8]}")
    with pytest.raises(InvalidArgument) as raised:
        await client.reserve(user_id=user_id, amount_millicredits=0)
    assert [field for field, _ in raised.value.field_violations] == ["amount_millicredits"]
    async with CreditClient(authority.addr, "not-a-valid-token-at-all") as stranger:
        with pytest.raises(Unauthenticated):
            await stranger.check(user_id, 10)


async def test_an_unreachable_authority_fails_closed_after_retries(world):
    async with CreditClient(f"127.0.0.1:{free_port()}", "x" * 24, attempts=3, initial_backoff=0.01,
                            timeout=2) as down:
        with pytest.raises(AuthorityUnavailable) as raised:
            async with down.hold(user_id="anyone", amount_millicredits=10):
                pytest.fail("the block must not run")
    assert raised.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
