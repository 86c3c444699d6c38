"""Issue 11, items 1, 2 and 7: what the authority answers around a call never loses or doubles it.

The REST service reaches the real authority through the test's gRPC proxy, which
plays one exact sequence per test (tests/faults/grpc_faults.py: `proxy.script`).
"""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from rest_support import InferenceProcess, make_key

from .grpc_faults import PASS, CommitFaultRates, FaultProxy, Step

COMMIT = "/credit.v1.CreditAuthority/Commit"
RESERVE = "/credit.v1.CreditAuthority/Reserve"
MESSAGES = [{"role": "user", "content": "Say hello."}]


@pytest.fixture
async def proxy(own_authority):
    server = await FaultProxy(own_authority.addr, CommitFaultRates(), seed=0).start()
    yield server
    await server.stop()


@pytest.fixture
def rest(proxy, tokens, models_file):
    process = InferenceProcess(proxy, tokens.spend, models_file).start()  # type: ignore[arg-type]  # has .addr
    yield process
    process.stop()


@pytest.fixture
def payer(world, admin) -> tuple[str, str]:
    _, user_id = world.funded_member(allocation_mc=100_000)
    return user_id, make_key(admin, user_id)[0]


async def rows(db, user_id: str) -> list[dict]:
    found = await db.fetch("""SELECT r.status, r.amount_mc, r.charged_mc, u.request_metadata
                              FROM reservations r LEFT JOIN usage_attribution u USING (reservation_id)
                              WHERE r.user_id = $1 ORDER BY r.created_at""", user_id)
    return [{**r, "request_metadata": json.loads(r["request_metadata"]) if r["request_metadata"] else None}
            for r in found]


async def committed(db, user_id: str, count: int, timeout: float = 20) -> list[dict]:
    deadline = time.monotonic() + timeout
    while (found := await rows(db, user_id)) and sum(r["status"] == "committed" for r in found) < count:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    return found


async def chat(rest: InferenceProcess, key: str) -> httpx.Response:
    """Async: the proxy serves from this test's event loop."""
    async with httpx.AsyncClient(timeout=60) as client:
        return await client.post(rest.base_url + "/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                 json={"model": "up-chat", "messages": MESSAGES})


async def test_a_commit_answered_internal_is_retried_and_charged_once(rest, proxy, payer, db):
    user_id, key = payer
    proxy.script[COMMIT].extend([Step(grpc.StatusCode.INTERNAL), Step(grpc.StatusCode.INTERNAL, after_forward=True)])
    response = await chat(rest, key)
    assert response.status_code == 200, response.text
    assert "X-Billing-Status" not in response.headers
    [row] = await committed(db, user_id, 1)
    assert row["status"] == "committed" and row["charged_mc"] == int(
        round(float(response.headers["X-Cost-Incurred"]) * 1000))
    assert proxy.forwarded[COMMIT] >= 2  # the landed commit and its replay


async def test_a_commit_the_authority_keeps_refusing_waits_in_the_outbox(rest, proxy, payer, db):
    user_id, key = payer
    proxy.script[COMMIT].extend([Step(grpc.StatusCode.INTERNAL)] * 6)  # more than the inline retries
    response = await chat(rest, key)
    assert response.status_code == 200, response.text
    assert response.headers["X-Billing-Status"] == "queued"
    [row] = await committed(db, user_id, 1)
    assert row["status"] == "committed", "the outbox did not land it"


async def test_a_commit_whose_metadata_is_refused_is_charged_without_it(rest, proxy, payer, db):
    user_id, key = payer
    refusal = error_details_pb2.BadRequest(field_violations=[error_details_pb2.BadRequest.FieldViolation(
        field="metadata", description="strings must not contain NUL characters")])
    proxy.script[COMMIT].append(Step(grpc.StatusCode.INVALID_ARGUMENT, detail=refusal))
    response = await chat(rest, key)
    assert response.status_code == 200, response.text
    [row] = await committed(db, user_id, 1)
    assert row["status"] == "committed"
    recorded = row["request_metadata"]  # the Reserve's metadata, merged with what the Commit sent
    assert recorded["metadata_refused"].startswith("scripted by the test proxy"), recorded
    assert "prompt_tokens" not in recorded, "the refused metadata was sent again"


async def test_a_stream_left_after_its_last_chunk_is_still_settled(rest, proxy, payer, db):
    """With include_usage the finish chunk is relayed once the provider is done; the client leaves
    there, while the Commit is in flight (the proxy holds it 1 s): it lands anyway, uncut."""
    user_id, key = payer
    proxy.script[COMMIT].append(Step(delay=1.0))
    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream("POST", rest.base_url + "/chat/completions",
                                 headers={"Authorization": f"Bearer {key}"},
                                 json={"model": "up-chat", "messages": MESSAGES, "stream": True,
                                       "stream_options": {"include_usage": True}}) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: {") and any(c.get("finish_reason") for c in json.loads(line[6:])["choices"]):
                    break  # everything but the usage chunk, which waits for the Commit
    [row] = await committed(db, user_id, 1)
    assert row["status"] == "committed", row
    assert row["request_metadata"]["completion_tokens"] == 9 and not row["request_metadata"]["stream_cut"]


async def test_a_second_request_with_one_idempotency_key_never_shares_the_first_hold(rest, proxy, upstream,
                                                                                     payer, db):
    """The second Reserve's answer is lost and retried: the retry must not be taken for its own hold."""
    user_id, key = payer
    proxy.script[RESERVE].extend([PASS, Step(grpc.StatusCode.UNAVAILABLE, after_forward=True)])
    before = upstream.calls["up-delay"]
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "shared-key-1"}
    body = {"model": "up-delay", "messages": MESSAGES}
    async with httpx.AsyncClient(timeout=30) as client:
        first = asyncio.create_task(client.post(rest.base_url + "/chat/completions", json=body, headers=headers))
        while upstream.calls["up-delay"] == before:
            await asyncio.sleep(0.02)
        second = await client.post(rest.base_url + "/chat/completions", json=body, headers=headers)
        assert (await first).status_code == 200
    assert second.status_code == 409, second.text
    assert upstream.calls["up-delay"] == before + 1, "the model was called twice for one hold"
    [row] = await committed(db, user_id, 1)
    assert row["status"] == "committed"


async def test_a_commit_refused_for_good_is_kept_for_an_operator_not_dropped(rest, proxy, payer, db):
    """NOT_FOUND is the authority's final answer for a reservation: not retried, but kept and counted."""
    user_id, key = payer
    proxy.script[COMMIT].append(Step(grpc.StatusCode.NOT_FOUND))
    response = await chat(rest, key)
    assert response.status_code == 200, response.text  # the model was called: the client gets its answer
    async with httpx.AsyncClient(timeout=10) as client:
        exposed = (await client.get(f"{rest.url}/metrics")).text
    assert "inference_outbox_refused 1.0" in exposed
    assert "inference_outbox_pending 0.0" in exposed
    [row] = await rows(db, user_id)
    assert row["status"] == "held", "a refused Commit is not resent by itself"
