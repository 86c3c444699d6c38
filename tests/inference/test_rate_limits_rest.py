"""Rate limits at the REST edge (issue 14, README "Rate limits"): the authority's RATE_LIMITED refusal is
429 with OpenAI's body, `Retry-After` and `retry-after-ms` (nothing held, no model called), OpenAI's
x-ratelimit-* headers on every response a per-minute limit applied to, and the official `openai` SDK's
own retry waits and succeeds. Insufficient credits stay 402."""

from __future__ import annotations

import asyncio
import json
import math
import time

import httpx
import openai
from invariants import assert_invariants
from rest_support import make_key

from credit.v1 import admin_pb2, authority_pb2
from inference_service.ratelimits import duration

MESSAGES = [{"role": "user", "content": "Say hello."}]
CHAT = "/chat/completions"


class Recorder:
    """Every HTTP response the SDK received (its retries included), through an httpx event hook."""

    def __init__(self) -> None:
        self.responses: list[tuple[int, dict[str, str], float]] = []

    def hook(self, response) -> None:
        self.responses.append((response.status_code, dict(response.headers), time.monotonic()))

    async def ahook(self, response) -> None:
        self.hook(response)

    def statuses(self) -> list[int]:
        return [status for status, _, _ in self.responses]


def recording_sdk(inference, key: str, recorder: Recorder, max_retries: int) -> openai.OpenAI:
    http = openai.DefaultHttpxClient(event_hooks={"response": [recorder.hook]})
    return openai.OpenAI(base_url=inference.base_url, api_key=key, max_retries=max_retries, timeout=60,
                         http_client=http)


def recording_async_sdk(inference, key: str, recorder: Recorder, max_retries: int) -> openai.AsyncOpenAI:
    http = openai.DefaultAsyncHttpxClient(event_hooks={"response": [recorder.ahook]})
    return openai.AsyncOpenAI(base_url=inference.base_url, api_key=key, max_retries=max_retries, timeout=60,
                              http_client=http)


def post(inference, key: str, body: dict, **headers: str) -> httpx.Response:
    return httpx.post(inference.base_url + CHAT, json=body, timeout=60,
                      headers={"Authorization": f"Bearer {key}", **headers})


async def reservations(db, user_id: str) -> list:
    return await db.fetch("SELECT * FROM reservations WHERE user_id = $1 ORDER BY created_at", user_id)


def test_durations_are_written_as_openai_writes_them() -> None:
    assert [duration(ms) for ms in (0, 1, 250, 999, 1000, 1500, 6000, 59_999, 60_000, 61_250, 3_723_000)] == [
        "0s", "1ms", "250ms", "999ms", "1s", "1.5s", "6s", "59.999s", "1m0s", "1m1.25s", "1h2m3s"]


async def test_rpm_2_for_a_key_the_sdk_retries_the_third_call_after_retry_after_and_it_succeeds(
        inference, member, admin, upstream, db):
    admin.SetRateLimit(admin_pb2.SetRateLimitRequest(key_id=member.key_id, requests_per_minute=2))
    recorder = Recorder()
    client = recording_sdk(inference, member.key, recorder, max_retries=2)
    before = upstream.calls["up-chat"]
    for expected_remaining in (1, 0):
        raw = client.chat.completions.with_raw_response.create(model="up-chat", messages=MESSAGES, max_tokens=5)
        assert raw.headers["x-ratelimit-limit-requests"] == "2"
        assert raw.headers["x-ratelimit-remaining-requests"] == str(expected_remaining)
        assert raw.headers["x-ratelimit-reset-requests"] in {duration(ms) for ms in range(29_000, 60_001)}
        assert "x-ratelimit-limit-tokens" not in raw.headers  # no tokens-per-minute limit applies
    started = time.monotonic()
    third = client.chat.completions.create(model="up-chat", messages=MESSAGES, max_tokens=5)
    assert third.choices[0].message.content
    assert recorder.statuses() == [200, 200, 429, 200], "the SDK retried once, after the 429"
    _, refused, refused_at = recorder.responses[2]
    delay_ms = int(refused["retry-after-ms"])
    assert 25_000 < delay_ms <= 30_000 and refused["retry-after"] == str(math.ceil(delay_ms / 1000))
    assert (refused["x-ratelimit-limit-requests"], refused["x-ratelimit-remaining-requests"]) == ("2", "0")
    assert recorder.responses[3][2] - refused_at >= delay_ms / 1000 - 0.05, "the SDK did not wait"
    assert time.monotonic() - started < delay_ms / 1000 + 10
    assert upstream.calls["up-chat"] == before + 3, "the refused attempt reached the model"
    rows = await reservations(db, member.user_id)
    assert [r["status"] for r in rows] == ["committed"] * 3, "the refused attempt held something"
    assert {r["api_key_id"] for r in rows} == {member.key_id}


def test_a_429_is_openais_body_and_names_the_limit_scope_and_window(inference, world, admin, upstream):
    org_id, user_id = world.funded_member(allocation_mc=100_000)
    key, _ = make_key(admin, user_id)
    admin.SetRateLimit(admin_pb2.SetRateLimitRequest(org_id=org_id, requests_per_minute=1))
    assert post(inference, key, {"model": "up-chat", "messages": MESSAGES}).status_code == 200
    before = upstream.calls["up-chat"]
    response = post(inference, key, {"model": "up-chat", "messages": MESSAGES, "stream": True})
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    for word in ("requests_per_minute", "org", "minute"):
        assert word in error["message"]
    assert (error["limit"], error["scope"], error["window"]) == ("requests_per_minute", "org", "minute")
    assert int(response.headers["retry-after"]) == math.ceil(int(response.headers["retry-after-ms"]) / 1000)
    assert upstream.calls["up-chat"] == before


async def test_headers_on_a_streamed_response_and_tokens_per_minute_see_the_estimate_then_the_real_count(
        inference, member, admin, db):
    """The hold estimates the input with its safety margin plus the output cap; the Commit sends what the
    provider counted, so the window is charged the real tokens, not the estimate."""
    tpm = 6_000  # 100 tokens a second come back
    admin.SetRateLimit(admin_pb2.SetRateLimitRequest(org_id=member.org_id, user_id=member.user_id,
                                                     tokens_per_minute=tpm, requests_per_minute=100))
    text = "Tally the ledger of every member of the organization, line by line. " * 200  # ~3,000 tokens
    started = time.monotonic()
    with httpx.stream("POST", inference.base_url + CHAT, headers={"Authorization": f"Bearer {member.key}"},
                      json={"model": "up-count", "messages": [{"role": "user", "content": text}], "stream": True,
                            "max_tokens": 200}, timeout=60) as response:
        assert response.status_code == 200
        headers = response.headers
        lines = [line for line in response.iter_lines() if line.startswith("data: {")]
    assert (headers["x-ratelimit-limit-requests"], headers["x-ratelimit-remaining-requests"]) == ("100", "99")
    [row] = await reservations(db, member.user_id)
    assert row["estimated_tokens"] > 3_000 * 1.2 + 200 and row["api_key_id"] == member.key_id
    assert headers["x-ratelimit-limit-tokens"] == str(tpm)
    assert headers["x-ratelimit-remaining-tokens"] == str(tpm - row["estimated_tokens"])
    assert json.loads(lines[-1][6:])["x_billing"]
    usage = json.loads(await db.fetchval("SELECT request_metadata FROM usage_attribution WHERE user_id = $1",
                                         member.user_id))
    real = usage["prompt_tokens"] + usage["completion_tokens"]
    assert real < row["estimated_tokens"] - 500
    [limit] = admin.ListRateLimits(admin_pb2.ListRateLimitsRequest(org_id=member.org_id,
                                                                   user_id=member.user_id)).limits
    came_back = math.ceil((time.monotonic() - started) * tpm / 60) + 1
    assert tpm - real <= limit.tokens_remaining <= tpm - real + came_back, (limit.tokens_remaining, real)


async def test_max_parallel_3_under_50_concurrent_sdk_streams_never_passed_and_all_served(
        inference, world, admin, db):
    org_id = world.org(pool_mc=10**8)
    users = [world.user() for _ in range(5)]
    keys = []
    for user_id in users:
        world.member(org_id, user_id, 10**7)
        keys.append(make_key(admin, user_id)[0])
    admin.SetRateLimit(admin_pb2.SetRateLimitRequest(org_id=org_id, max_parallel=3))
    recorder = Recorder()
    clients = [recording_async_sdk(inference, key, recorder, max_retries=100) for key in keys]
    open_now: list[int] = []
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            open_now.append(await db.fetchval(
                "SELECT count(*) FROM reservations WHERE org_id = $1 AND status = 'held'", org_id))
            await asyncio.sleep(0.005)

    async def one(i: int) -> str:
        stream = await clients[i % 5].chat.completions.create(model="up-slow", messages=MESSAGES, stream=True,
                                                              max_tokens=15)
        return "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])

    sampler = asyncio.create_task(sample())
    texts = await asyncio.gather(*(one(i) for i in range(50)))
    done.set()
    await sampler
    assert all(texts), "a stream came back empty"
    assert max(open_now) == 3, f"open holds sampled: max {max(open_now)} over {len(open_now)} samples"
    refusals = [h for status, h, _ in recorder.responses if status == 429]
    assert refusals and all(h["retry-after-ms"] == "1000" for h in refusals)
    assert recorder.statuses().count(200) == 50
    rows = await db.fetch("SELECT status, count(*) FROM reservations WHERE org_id = $1 GROUP BY 1", org_id)
    assert {r["status"]: r["count"] for r in rows} == {"committed": 50}, "a 429 held something"
    assert await db.fetchval("SELECT count(*) FROM usage_attribution WHERE org_id = $1", org_id) == 50
    await assert_invariants(db)


async def test_insufficient_credits_stay_402_under_a_limit_and_a_request_larger_than_the_limit_is_not_retried(
        inference, world, admin, spend, upstream, db):
    org_id, user_id = world.funded_member(allocation_mc=5)
    key, key_id = make_key(admin, user_id)
    admin.SetRateLimit(admin_pb2.SetRateLimitRequest(key_id=key_id, requests_per_minute=1))
    for _ in range(2):  # a refusal for credits takes nothing from the limit: 402 again, not 429
        response = post(inference, key, {"model": "up-chat", "messages": MESSAGES})
        assert response.status_code == 402, response.text
        assert response.json()["error"]["code"] == "insufficient_credits" and "retry-after" not in response.headers

    rich_org, rich = world.funded_member(allocation_mc=100_000)
    rich_key, _ = make_key(admin, rich)
    admin.SetRateLimit(admin_pb2.SetRateLimitRequest(org_id=rich_org, tokens_per_minute=100))
    before = upstream.calls["up-chat"]
    response = post(inference, rich_key, {"model": "up-chat", "messages": MESSAGES, "max_tokens": 200})
    assert response.status_code == 429, response.text
    assert response.headers["x-should-retry"] == "false" and "retry-after" not in response.headers
    assert response.headers["x-ratelimit-limit-tokens"] == "100"
    assert "tokens_per_minute" in response.json()["error"]["message"]
    assert upstream.calls["up-chat"] == before
    assert await reservations(db, rich) == [] and await reservations(db, user_id) == []
    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=rich, org_id=rich_org))
    assert (balance.used_millicredits, balance.held_millicredits) == (0, 0)
