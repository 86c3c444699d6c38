"""Chat completions through the official openai SDK: billed, with headers that
equal the authority's own balance, over mock_response and a real HTTP upstream."""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
import openai
import pytest
from invariants import assert_invariants
from upstream import PROMPT_TOKENS, WORDS

from credit.v1 import authority_pb2

from .conftest import CHAT_IN, CHAT_OUT, async_sdk, sdk

MESSAGES = [{"role": "user", "content": "Summarize these search results, please."}]


def millicredits(text: str) -> int:
    return int(Decimal(text) * 1000)


def expected_cost_mc(prompt_tokens: int, completion_tokens: int) -> int:
    usd = Decimal(CHAT_IN) * prompt_tokens + Decimal(CHAT_OUT) * completion_tokens
    cents = usd * 100 * 1000  # 100 credits per USD, 1,000 millicredits per credit
    return int(cents.to_integral_value(rounding="ROUND_CEILING"))


async def assert_headers_match_authority(raw, spend, db, user_id: str, org_id: str = ""):
    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=user_id, org_id=org_id))
    assert millicredits(raw.headers["X-Credits-Remaining"]) == balance.available_millicredits
    row = await db.fetchrow("SELECT * FROM usage_attribution WHERE request_id LIKE '%:' || $1",
                            raw.headers["X-Request-Id"])
    assert row is not None, "the call left no attribution row"
    assert millicredits(raw.headers["X-Cost-Incurred"]) == row["credits_used"]
    assert balance.held_millicredits == 0
    return row


async def test_sync_sdk_chat_with_mock_response_is_billed(inference, member, spend, db):
    client = sdk(inference, member.key)
    raw = client.chat.completions.with_raw_response.create(model="demo-chat", messages=MESSAGES)
    completion = raw.parse()
    assert "mock_response" in completion.choices[0].message.content
    assert raw.headers["X-Funding-Source"] == f"org:{member.org_id}"
    row = await assert_headers_match_authority(raw, spend, db, member.user_id)
    assert row["service_type"] == "llm_inference" and row["service_name"] == "demo-chat"
    metadata = json.loads(row["request_metadata"])
    assert metadata["provider"] == "openai" and metadata["completion_tokens"] == completion.usage.completion_tokens
    assert row["credits_used"] == expected_cost_mc(completion.usage.prompt_tokens, completion.usage.completion_tokens)
    await assert_invariants(db)


async def test_async_sdk_chat_over_a_real_http_upstream(inference, member, spend, db, upstream):
    before = upstream.calls["up-chat"]
    client = async_sdk(inference, member.key)
    raw = await client.chat.completions.with_raw_response.create(
        model="up-chat", messages=MESSAGES, max_tokens=50,
        extra_body={"power_level": "balanced", "task_type": "summary"})
    completion = raw.parse()
    assert completion.choices[0].message.content == " ".join(WORDS)
    assert completion.model == "up-chat"
    assert upstream.calls["up-chat"] == before + 1
    row = await assert_headers_match_authority(raw, spend, db, member.user_id)
    assert row["credits_used"] == expected_cost_mc(PROMPT_TOKENS, len(WORDS))
    metadata = json.loads(row["request_metadata"])
    assert (metadata["power_level"], metadata["task_type"]) == ("balanced", "summary")
    assert metadata["prompt_tokens"] == PROMPT_TOKENS and metadata["completion_tokens"] == len(WORDS)


async def test_streaming_over_the_upstream_commits_from_the_final_usage(inference, member, spend, db, upstream):
    client = sdk(inference, member.key)
    with client.chat.completions.with_streaming_response.create(
            model="up-chat", messages=MESSAGES, stream=True, stream_options={"include_usage": True}) as raw:
        chunks = list(raw.parse())
        headers = raw.headers
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.split() == WORDS
    usage_chunks = [c for c in chunks if c.usage]
    assert usage_chunks and usage_chunks[-1].usage.completion_tokens == len(WORDS)
    billing = chunks[-1].model_extra["x_billing"]
    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=member.user_id))
    assert millicredits(billing["credits_remaining"]) == balance.available_millicredits
    assert billing["request_id"] == headers["X-Request-Id"]
    row = await db.fetchrow("SELECT * FROM usage_attribution WHERE request_id LIKE '%:' || $1",
                            headers["X-Request-Id"])
    assert row["credits_used"] == expected_cost_mc(PROMPT_TOKENS, len(WORDS)) == millicredits(
        billing["cost_incurred"])


async def test_async_streaming_with_mock_response_and_no_usage_requested(inference, member, spend, db):
    client = async_sdk(inference, member.key)
    stream = await client.chat.completions.create(model="demo-chat", messages=MESSAGES, stream=True)
    chunks = [c async for c in stream]
    assert all(c.choices for c in chunks), "no usage-only chunk unless the client asked for it"
    assert "mock_response" in "".join(c.choices[0].delta.content or "" for c in chunks)
    billing = chunks[-1].model_extra["x_billing"]
    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=member.user_id))
    assert millicredits(billing["credits_remaining"]) == balance.available_millicredits
    assert balance.used_millicredits == millicredits(billing["cost_incurred"]) > 0


def test_sse_wire_format_is_openais(inference, member):
    with httpx.stream("POST", f"{inference.base_url}/chat/completions",
                      headers={"Authorization": f"Bearer {member.key}"},
                      json={"model": "up-chat", "messages": MESSAGES, "stream": True}, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        body = response.read().decode()
    events = [e for e in body.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    first = json.loads(events[0][len("data: "):])
    assert first["object"] == "chat.completion.chunk" and first["choices"][0]["delta"]["role"] == "assistant"


def test_models_lists_the_catalogue(inference, member):
    models = {m.id for m in sdk(inference, member.key).models.list()}
    assert {"demo-chat", "demo-image", "up-chat", "up-image"} <= models
    assert "gpt-4o" not in models  # no provider key set


async def test_images_are_billed_per_image(inference, member, spend, db, upstream):
    client = sdk(inference, member.key)
    raw = client.images.with_raw_response.generate(model="up-image", prompt="a ledger", n=2)
    images = raw.parse()
    assert len(images.data) == 2 and images.data[0].url.startswith("http://upstream.invalid/")
    row = await assert_headers_match_authority(raw, spend, db, member.user_id)
    assert row["credits_used"] == 2 * 4_000 and row["service_type"] == "image_generation"
    mock = client.images.with_raw_response.generate(model="demo-image", prompt="a ledger")
    assert mock.parse().data[0].url
    await assert_headers_match_authority(mock, spend, db, member.user_id)


def test_balance_and_usage_endpoints_show_the_callers_own(inference, member, spend):
    client = sdk(inference, member.key)
    raw = client.chat.completions.with_raw_response.create(model="demo-chat", messages=MESSAGES)
    headers = {"Authorization": f"Bearer {member.key}"}
    balance = httpx.get(f"{inference.url}/api/v1/credits/balance", headers=headers).json()
    assert balance["available"] == raw.headers["X-Credits-Remaining"]
    assert balance["funding_source"] == f"org:{member.org_id}" and balance["limit"] == "100.000"
    usage = httpx.get(f"{inference.url}/api/v1/usage", headers=headers).json()
    assert [r["request_id"] for r in usage["data"]] == [raw.headers["X-Request-Id"]]
    assert usage["data"][0]["credits"] == raw.headers["X-Cost-Incurred"]
    grouped = httpx.get(f"{inference.url}/api/v1/usage", params={"group_by": "model"}, headers=headers).json()
    assert grouped["groups"][0]["key"] == "demo-chat"


def test_openapi_docs_are_served(inference):
    assert httpx.get(f"{inference.url}/docs").status_code == 200
    schema = httpx.get(f"{inference.url}/openapi.json").json()
    assert "/api/v1/llm/chat/completions" in schema["paths"]


def test_a_retried_idempotency_key_is_not_billed_twice(inference, member, spend):
    client = sdk(inference, member.key)
    headers = {"Idempotency-Key": "order-42-summary"}
    first = client.chat.completions.with_raw_response.create(model="demo-chat", messages=MESSAGES,
                                                             extra_headers=headers)
    assert first.headers["X-Request-Id"] == "order-42-summary"
    with pytest.raises(openai.ConflictError):
        client.chat.completions.create(model="demo-chat", messages=MESSAGES, extra_headers=headers)
    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=member.user_id))
    assert balance.used_millicredits == millicredits(first.headers["X-Cost-Incurred"])
