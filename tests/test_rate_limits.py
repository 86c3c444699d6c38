"""Rate limits, enforced by the authority in the transaction of each Reserve (README, "Rate limits"):
requests and tokens per minute (GCRA), open holds at once, a member's credits per day, for an org, a
member, an API key and an individual. A refused Reserve holds nothing and answers RESOURCE_EXHAUSTED with
ErrorInfo RATE_LIMITED and a RetryInfo that is the truth: the request passes once it has waited that long.
The limits hold across authority processes and restarts, and every rate_limits row's open holds are the
held reservations counted against it (an invariant every test's assert_invariants checks)."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import pytest
from conftest import AuthorityProcess, Stub
from helpers import bad_request, error_info, reserve_request, retry_info
from invariants import assert_invariants, row_counts

from credit.v1 import admin_pb2, admin_pb2_grpc, authority_pb2, authority_pb2_grpc

CALLS = 200
RPM = 10


def set_limit(admin, **fields) -> admin_pb2.RateLimit:
    return admin.SetRateLimit(admin_pb2.SetRateLimitRequest(**fields))


def limited(error: grpc.RpcError) -> tuple[dict[str, str], float | None]:
    """(ErrorInfo metadata, RetryInfo delay in seconds) of a RATE_LIMITED refusal."""
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    info = error_info(error)
    assert info is not None and info.reason == "RATE_LIMITED", error
    retry = retry_info(error)
    return dict(info.metadata), None if retry is None else retry.retry_delay.ToMilliseconds() / 1000


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


async def test_200_simultaneous_reserves_over_two_processes_grant_exactly_the_rpm_and_say_when_to_retry(
        world, admin, spenders, spend, db):
    org_id, user_id = world.funded_member(10**9)
    set_limit(admin, org_id=org_id, user_id=user_id, requests_per_minute=RPM)

    async def one(i: int):
        sent = time.monotonic()
        try:
            answer = await spenders[i % 2].Reserve(reserve_request(user_id, 1_000, org_id))
        except grpc.aio.AioRpcError as error:
            answer = error
        return sent, time.monotonic(), answer

    results = await asyncio.gather(*(one(i) for i in range(CALLS)))
    granted = [a for _, _, a in results if isinstance(a, authority_pb2.ReserveResponse)]
    refusals = [(sent, got, limited(a)) for sent, got, a in results if isinstance(a, grpc.RpcError)]
    assert len(granted) == RPM and len(refusals) == CALLS - RPM
    assert sorted(g.rate_limits.requests.remaining for g in granted) == list(range(RPM))
    assert {g.rate_limits.requests.limit for g in granted} == {RPM}
    for _, _, (meta, delay) in refusals:
        assert meta == {"limit": "requests_per_minute", "value": str(RPM), "scope": "member", "window": "minute",
                        "retry_after_ms": meta["retry_after_ms"], "exceeds": "false"}
        assert delay is not None and 0 < delay <= 60 / RPM
    # Each refusal was decided at some instant between its sending and its answer, so each names a moment
    # (decided + delay) inside [sent + delay, answered + delay]; a true delay names the same moment for all.
    earliest = max(sent + delay for sent, _, (_, delay) in refusals)
    latest = min(got + delay for _, got, (_, delay) in refusals)
    assert earliest <= latest + 0.01, f"the delays disagree by {earliest - latest:.3f} s"
    # And it is the truth: waited that long (to the latest the moment can be), one more request passes (one:
    # the next is refused again).
    await asyncio.sleep(max(latest - time.monotonic(), 0) + 0.05)
    granted.append(await spenders[0].Reserve(reserve_request(user_id, 1_000, org_id)))
    limited(refused(lambda: spend.Reserve(reserve_request(user_id, 1_000, org_id))))
    for hold in granted:
        await spenders[1].Release(authority_pb2.ReleaseRequest(reservation_id=hold.reservation_id, reason="done"))
    await assert_invariants(db)


async def test_max_parallel_is_never_passed_by_50_concurrent_callers_and_all_are_served(world, admin, spenders, db):
    org_id = world.org(10**9)
    users = [world.user() for _ in range(5)]
    for user_id in users:
        world.member(org_id, user_id, 10**8)
    set_limit(admin, org_id=org_id, max_parallel=3)
    open_now: list[int] = []
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            open_now.append(await db.fetchval(
                "SELECT count(*) FROM reservations WHERE org_id = $1 AND status = 'held'", org_id))
            await asyncio.sleep(0.005)

    async def caller(i: int) -> int:
        refusals = 0
        for _ in range(2_000):  # bounded: open holds that never come back must fail the test, not hang it
            try:
                hold = await spenders[i % 2].Reserve(reserve_request(users[i % 5], 500, org_id))
                break
            except grpc.aio.AioRpcError as error:
                meta, delay = limited(error)
                assert meta["limit"] == "max_parallel" and meta["scope"] == "org"
                refusals += 1
                await asyncio.sleep(delay / 10)  # the hint is a bound for a call's length; these are short
        else:
            pytest.fail(f"caller {i} was refused {refusals} times")
        await asyncio.sleep(0.02)  # the "call"
        await spenders[i % 2].Commit(authority_pb2.CommitRequest(reservation_id=hold.reservation_id,
                                                                 amount_millicredits=100))
        return refusals

    sampler = asyncio.create_task(sample())
    refusals = await asyncio.gather(*(caller(i) for i in range(50)))
    done.set()
    await sampler
    assert max(open_now) == 3, f"sampled open holds: max {max(open_now)} over {len(open_now)} samples"
    assert sum(refusals) > 0
    assert await db.fetchval("SELECT count(*) FROM usage_attribution WHERE org_id = $1", org_id) == 50
    [limit] = admin.ListRateLimits(admin_pb2.ListRateLimitsRequest(org_id=org_id)).limits
    assert (limit.scope, limit.max_parallel, limit.open_holds) == ("org", 3, 0)
    await assert_invariants(db)


def test_tokens_per_minute_counts_the_estimate_then_the_real_count_both_ways(world, admin, spend, db):
    tpm = 600  # 10 tokens a second come back
    over_org, over_user = world.funded_member(10**8)
    set_limit(admin, org_id=over_org, user_id=over_user, tokens_per_minute=tpm)
    hold = spend.Reserve(reserve_request(over_user, 1_000, over_org, estimated_tokens=500))
    assert (hold.rate_limits.tokens.limit, hold.rate_limits.tokens.remaining) == (tpm, tpm - 500)
    meta, _ = limited(refused(lambda: spend.Reserve(reserve_request(over_user, 1_000, over_org,
                                                                    estimated_tokens=400))))
    assert meta["limit"] == "tokens_per_minute"
    # Over-estimated: the call used 50 tokens, the 450 it did not use are free again at once.
    spend.Commit(authority_pb2.CommitRequest(reservation_id=hold.reservation_id, amount_millicredits=10, tokens=50))
    again = spend.Reserve(reserve_request(over_user, 1_000, over_org, estimated_tokens=400))
    assert again.rate_limits.tokens.remaining >= tpm - 50 - 400

    # Under-estimated: 100 reserved, 500 used; the window is charged 500.
    under_org, under_user = world.funded_member(10**8)
    set_limit(admin, org_id=under_org, user_id=under_user, tokens_per_minute=tpm)
    small = spend.Reserve(reserve_request(under_user, 1_000, under_org, estimated_tokens=100))
    started = time.monotonic()
    spend.Commit(authority_pb2.CommitRequest(reservation_id=small.reservation_id, amount_millicredits=10, tokens=500))
    meta, delay = limited(refused(lambda: spend.Reserve(reserve_request(under_user, 1_000, under_org,
                                                                        estimated_tokens=300))))
    elapsed = time.monotonic() - started
    assert meta["limit"] == "tokens_per_minute" and meta["scope"] == "member"
    # 100 tokens were left; 300 need 200 more, at 10 a second: 20 s, less what came back meanwhile.
    assert 20 - elapsed * 1.01 - 0.01 <= delay <= 20 + 0.01
    [limit] = [x for x in admin.ListRateLimits(admin_pb2.ListRateLimitsRequest(org_id=under_org)).limits]
    assert tpm - 500 <= limit.tokens_remaining <= tpm - 500 + int((time.monotonic() - started) * tpm / 60) + 1
    spend.Release(authority_pb2.ReleaseRequest(reservation_id=again.reservation_id, reason="done"))


def test_an_api_keys_limit_applies_to_the_requests_made_with_it(world, admin, spend):
    org_id, user_id = world.funded_member(10**8)
    key = admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(user_id=user_id, org_id=org_id,
                                                            kind=admin_pb2.API_KEY_KIND_USER)).key
    row = set_limit(admin, key_id=key.key_id, requests_per_minute=1)
    assert (row.scope, row.org_id, row.user_id, row.key_id) == ("key", org_id, user_id, key.key_id)
    spend.Reserve(reserve_request(user_id, 100, org_id, api_key_id=key.key_id))
    meta, _ = limited(refused(lambda: spend.Reserve(reserve_request(user_id, 100, org_id, api_key_id=key.key_id))))
    assert (meta["scope"], meta["limit"]) == ("key", "requests_per_minute")
    spend.Reserve(reserve_request(user_id, 100, org_id))  # without the key: the key's limit does not apply


def test_a_members_credits_per_day_count_holds_then_charges(world, admin, spend):
    org_id, user_id = world.funded_member(10**8)
    set_limit(admin, org_id=org_id, user_id=user_id, credits_per_day_millicredits=5_000)
    first = spend.Reserve(reserve_request(user_id, 3_000, org_id))
    meta, delay = limited(refused(lambda: spend.Reserve(reserve_request(user_id, 3_000, org_id))))
    assert (meta["limit"], meta["window"]) == ("credits_per_day", "day") and 0 < delay <= 86_400
    spend.Commit(authority_pb2.CommitRequest(reservation_id=first.reservation_id, amount_millicredits=1_000))
    spend.Reserve(reserve_request(user_id, 3_000, org_id))  # 1,000 charged + 3,000 held: within 5,000
    [limit] = admin.ListRateLimits(admin_pb2.ListRateLimitsRequest(org_id=org_id, user_id=user_id)).limits
    assert limit.credits_today_millicredits == 4_000
    meta, _ = limited(refused(lambda: spend.Reserve(reserve_request(user_id, 6_000, org_id))))
    assert meta["exceeds"] == "true"  # larger than the ceiling itself: waiting does not help


def test_a_rate_limit_is_never_insufficient_credits_nor_the_reverse(world, admin, spend):
    org_id, user_id = world.funded_member(1_000)
    set_limit(admin, org_id=org_id, requests_per_minute=1)
    poor = refused(lambda: spend.Reserve(reserve_request(user_id, 5_000, org_id)))  # too much: the limit is kept
    assert error_info(poor).reason == "INSUFFICIENT_CREDITS" and retry_info(poor) is None
    spend.Reserve(reserve_request(user_id, 100, org_id))
    meta, delay = limited(refused(lambda: spend.Reserve(reserve_request(user_id, 100, org_id))))
    assert meta["scope"] == "org" and delay > 0


def test_limits_live_in_the_database_and_survive_an_authority_restart(database_url, tokens, world, admin, db):
    user_id = world.user(individual_mc=10**6)
    set_limit(admin, user_id=user_id, requests_per_minute=2)
    own = AuthorityProcess(database_url, tokens).start()
    try:
        def stub() -> tuple[grpc.Channel, Stub]:
            channel = grpc.insecure_channel(own.addr)
            return channel, Stub(authority_pb2_grpc.CreditAuthorityStub(channel), tokens.other_spend)

        channel, other = stub()
        with channel:
            other.Reserve(reserve_request(user_id, 100))
            other.Reserve(reserve_request(user_id, 100))
        own.stop(kill=True)
        own.start()
        channel, other = stub()
        with channel:
            meta, _ = limited(refused(lambda: other.Reserve(reserve_request(user_id, 100))))
        assert meta["scope"] == "individual"
    finally:
        own.stop()


BAD = [
    ({"requests_per_minute": 0}, "requests_per_minute"),
    ({"requests_per_minute": -5}, "requests_per_minute"),
    ({"requests_per_minute": 1_000_001}, "requests_per_minute"),
    ({"tokens_per_minute": 0}, "tokens_per_minute"),
    ({"tokens_per_minute": 10**9 + 1}, "tokens_per_minute"),
    ({"max_parallel": 0}, "max_parallel"),
    ({"max_parallel": 100_001}, "max_parallel"),
    ({"credits_per_day_millicredits": 0}, "credits_per_day_millicredits"),
    ({"credits_per_month_millicredits": 10**15 + 1}, "credits_per_month_millicredits"),
    ({}, "requests_per_minute"),  # nothing to set
    ({"clear": True, "max_parallel": 3}, "clear"),
]


@pytest.mark.parametrize(("fields", "field"), BAD)
async def test_bad_limit_values_name_the_field_and_change_nothing(world, admin, db, fields, field):
    org_id, user_id = world.funded_member(1_000)
    set_limit(admin, org_id=org_id, user_id=user_id, requests_per_minute=7)
    before = await row_counts(db), [str(x) for x in admin.ListRateLimits(
        admin_pb2.ListRateLimitsRequest(org_id=org_id)).limits]
    error = refused(lambda: set_limit(admin, org_id=org_id, user_id=user_id, **fields))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in bad_request(error).field_violations] == [field]
    assert (await row_counts(db), [str(x) for x in admin.ListRateLimits(
        admin_pb2.ListRateLimitsRequest(org_id=org_id)).limits]) == before


async def test_limits_for_the_wrong_scope_are_refused_and_change_nothing(world, admin, spend, tokens, channel, db):
    org_id, user_id = world.funded_member(1_000)
    stranger = world.user()
    other_org, other_user = world.funded_member(1_000)
    key = admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(user_id=other_user, org_id=other_org,
                                                            kind=admin_pb2.API_KEY_KIND_USER)).key
    before = await row_counts(db)
    cases = [({"org_id": org_id, "user_id": stranger, "max_parallel": 2}, grpc.StatusCode.INVALID_ARGUMENT),
             ({"org_id": org_id, "credits_per_day_millicredits": 10}, grpc.StatusCode.INVALID_ARGUMENT),
             ({"org_id": org_id, "key_id": key.key_id, "max_parallel": 2}, grpc.StatusCode.INVALID_ARGUMENT),
             ({"org_id": "no-such-org-" + uuid.uuid4().hex[:6], "max_parallel": 2}, grpc.StatusCode.NOT_FOUND),
             ({"key_id": "ck_0000000000000000", "max_parallel": 2}, grpc.StatusCode.NOT_FOUND),
             ({"key_id": "not-a-key", "max_parallel": 2}, grpc.StatusCode.INVALID_ARGUMENT),
             ({"max_parallel": 2}, grpc.StatusCode.INVALID_ARGUMENT)]
    for fields, code in cases:
        assert refused(lambda f=fields: set_limit(admin, **f)).code() == code, fields
    reader = Stub(admin_pb2_grpc.CreditAdminStub(channel), tokens.read)
    assert refused(lambda: set_limit(reader, org_id=org_id, max_parallel=2)).code() == grpc.StatusCode.PERMISSION_DENIED
    for bad in ({"estimated_tokens": -1}, {"estimated_tokens": 10**9 + 1}, {"api_key_id": "ck_nope"}):
        error = refused(lambda b=bad: spend.Reserve(reserve_request(user_id, 100, org_id, **b)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in bad_request(error).field_violations] == list(bad)
    assert await row_counts(db) == before
