"""200 concurrent chat calls never overspend; a stream cut by the client is still charged."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
from invariants import assert_invariants

from credit.v1 import authority_pb2

from .conftest import async_sdk, make_key, sdk

MESSAGES = [{"role": "user", "content": "Enrich this company record."}]
CALLS = 200
K = 20


async def test_200_concurrent_calls_never_overspend_an_allocation(inference, world, admin, spend, db):
    # One probe call tells the worst-case estimate of this exact request.
    org, probe_user = world.funded_member(allocation_mc=10_000, pool_mc=1_000_000)
    probe_key, _ = make_key(admin, probe_user)
    sdk(inference, probe_key).chat.completions.create(model="demo-chat", messages=MESSAGES, max_tokens=100)
    estimate = json.loads(await db.fetchval(
        "SELECT metadata FROM reservations WHERE user_id = $1", probe_user))["estimate_millicredits"]

    user = world.user()
    allocation = K * estimate + estimate - 1  # fits exactly K worst cases at once
    world.member(org, user, allocation)
    key, _ = make_key(admin, user)
    client = async_sdk(inference, key)

    async def one():
        try:
            raw = await client.chat.completions.with_raw_response.create(model="demo-chat", messages=MESSAGES,
                                                                         max_tokens=100)
            return raw.headers["X-Request-Id"]
        except openai.APIStatusError as error:
            return error.status_code

    results = await asyncio.gather(*(one() for _ in range(CALLS)))
    succeeded = [r for r in results if isinstance(r, str)]
    failed = [r for r in results if not isinstance(r, str)]
    assert len(succeeded) >= K, "at least the K worst cases that fit at once must succeed"
    assert set(failed) <= {402}, f"only insufficient-credit refusals expected, got {set(failed)}"

    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=user))
    assert balance.held_millicredits == 0, "every failure released, every success committed"
    assert balance.used_millicredits <= allocation, "overspent"
    rows = await db.fetch("SELECT request_id FROM usage_attribution WHERE user_id = $1", user)
    assert sorted(r["request_id"].split(":", 1)[1] for r in rows) == sorted(succeeded)
    statuses = await db.fetch("SELECT status, count(*) FROM reservations WHERE user_id = $1 GROUP BY 1", user)
    assert {r["status"]: r["count"] for r in statuses} == {"committed": len(succeeded)}
    await assert_invariants(db)


async def test_a_stream_cut_by_the_client_is_charged_for_what_it_produced(inference, member, spend, db):
    received = []
    with httpx.stream("POST", f"{inference.base_url}/chat/completions",
                      headers={"Authorization": f"Bearer {member.key}"},
                      json={"model": "up-slow", "messages": MESSAGES, "stream": True}, timeout=30) as response:
        request_id = response.headers["X-Request-Id"]
        for line in response.iter_lines():
            if line.startswith("data: "):
                received.append(line)
            if len(received) >= 10:
                break  # the client hangs up mid-stream
    deadline = time.monotonic() + 20
    row = None
    while time.monotonic() < deadline and row is None:
        row = await db.fetchrow("SELECT * FROM usage_attribution WHERE request_id LIKE '%:' || $1", request_id)
        await asyncio.sleep(0.1)
    assert row is not None, "a cut stream left no usage"
    metadata = json.loads(row["request_metadata"])
    assert metadata["stream_cut"] is True
    assert 10 <= metadata["completion_tokens"] < 540
    assert row["credits_used"] > 0
    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=member.user_id))
    assert (balance.used_millicredits, balance.held_millicredits) == (row["credits_used"], 0)
    await assert_invariants(db)
