"""POST /api/v1/llm/responses (OpenAI's Responses API) through the official openai SDK, unchanged:
billed as chat is (estimate → Reserve → call → Commit) under service type `responses`, checked against
the attribution row and the authority's balance to the millicredit, over the offline demo model
(LiteLLM's mock_response) and over a local upstream that answers in OpenAI's wire format."""

from __future__ import annotations

import asyncio
import json
import time
from decimal import ROUND_CEILING, Decimal

import httpx
import litellm
import openai
import pytest
import yaml
from invariants import assert_invariants
from upstream import PROMPT_TOKENS, TOOL_ARGUMENTS, WORDS

from credit.v1 import admin_pb2, authority_pb2

from .conftest import async_sdk, sdk

PATH = "/responses"
MC_PER_USD = Decimal(100) * 1000  # the service's default rate (1 credit per US cent), 1,000 millicredits a credit
TOOL = {"type": "function", "name": "lookup", "description": "Looks up a ledger.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}


def price(models_file, model: str) -> tuple[Decimal, Decimal]:
    """The catalogue's USD prices per input and output token of `model`."""
    entries = yaml.safe_load(models_file.read_text())["model_list"]
    info = next(e["model_info"] for e in entries if e["model_name"] == model)
    return Decimal(str(info["input_cost_per_token"])), Decimal(str(info["output_cost_per_token"]))


def expected_mc(models_file, model: str, input_tokens: int, output_tokens: int) -> int:
    per_input, per_output = price(models_file, model)
    usd = per_input * input_tokens + per_output * output_tokens
    return int((usd * MC_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def millicredits(text: str) -> int:
    return int(Decimal(text) * 1000)


async def row_of(db, request_id: str, timeout: float = 20):
    """The attribution row of a request (a cut stream settles in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        row = await db.fetchrow("SELECT * FROM usage_attribution WHERE request_id LIKE '%:' || $1", request_id)
        if row is not None or time.monotonic() > deadline:
            return row
        await asyncio.sleep(0.05)


async def assert_billed(db, spend, member, request_id: str, cost: str, remaining: str, expected: int):
    row = await row_of(db, request_id)
    assert row is not None, "the call left no attribution row"
    assert row["service_type"] == "responses"
    assert row["credits_used"] == millicredits(cost) == expected
    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=member.user_id))
    assert millicredits(remaining) == balance.available_millicredits
    assert (balance.used_millicredits, balance.held_millicredits) == (expected, 0)
    return row


async def test_sdk_responses_create_over_the_demo_model(inference, member, spend, db, models_file):
    client = sdk(inference, member.key)
    raw = client.responses.with_raw_response.create(model="demo-chat", input="Summarize: credits are reserved.",
                                                    instructions="Answer in one sentence.")
    response = raw.parse()
    assert "mock_response" in response.output_text
    assert response.status == "completed" and response.model == "demo-chat" and response.store is False
    usage = response.usage
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens > 0
    expected = expected_mc(models_file, "demo-chat", usage.input_tokens, usage.output_tokens)
    row = await assert_billed(db, spend, member, raw.headers["X-Request-Id"], raw.headers["X-Cost-Incurred"],
                              raw.headers["X-Credits-Remaining"], expected)
    assert row["service_name"] == "demo-chat"
    metadata = json.loads(row["request_metadata"])
    assert (metadata["prompt_tokens"], metadata["completion_tokens"]) == (usage.input_tokens, usage.output_tokens)
    assert raw.headers["X-Funding-Source"] == f"org:{member.org_id}"
    await assert_invariants(db)


async def test_sdk_responses_stream_over_the_demo_model(inference, member, spend, db, models_file):
    client = async_sdk(inference, member.key)
    stream = await client.responses.create(model="demo-chat", input="Hello", stream=True)
    events = [event async for event in stream]
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert "mock_response" in text and final.output_text == text
    billing = events[-1].model_extra["x_billing"]
    expected = expected_mc(models_file, "demo-chat", final.usage.input_tokens, final.usage.output_tokens)
    await assert_billed(db, spend, member, billing["request_id"], billing["cost_incurred"],
                        billing["credits_remaining"], expected)


async def test_items_images_and_the_output_cap_reach_the_upstream(inference, member, spend, db, models_file,
                                                                  upstream):
    before = upstream.calls["up-chat"]
    client = sdk(inference, member.key)
    raw = client.responses.with_raw_response.create(
        model="up-chat", instructions="Be terse.", max_output_tokens=50, temperature=0.2,
        input=[{"role": "user", "content": [
            {"type": "input_text", "text": "What is on this receipt?"},
            {"type": "input_image", "image_url": "https://images.invalid/receipt.png", "detail": "low"}]}],
        extra_body={"power_level": "low", "task_type": "receipt"})
    response = raw.parse()
    assert response.output_text == " ".join(WORDS) and response.max_output_tokens == 50
    assert upstream.calls["up-chat"] == before + 1
    sent = upstream.app.state.bodies[-1]
    assert sent["max_tokens"] == 50, "the provider is sent the cap the hold paid for"
    assert sent["messages"][0] == {"role": "system", "content": "Be terse."}
    assert sent["messages"][1]["content"][1]["image_url"]["url"] == "https://images.invalid/receipt.png"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (PROMPT_TOKENS, len(WORDS))
    row = await assert_billed(db, spend, member, raw.headers["X-Request-Id"], raw.headers["X-Cost-Incurred"],
                              raw.headers["X-Credits-Remaining"],
                              expected_mc(models_file, "up-chat", PROMPT_TOKENS, len(WORDS)))
    metadata = json.loads(row["request_metadata"])
    assert (metadata["power_level"], metadata["task_type"], metadata["max_tokens"]) == ("low", "receipt", 50)


async def test_without_max_output_tokens_the_provider_gets_the_budget_the_hold_paid_for(inference, member, db,
                                                                                        upstream):
    raw = sdk(inference, member.key).responses.with_raw_response.create(model="up-count", input="Hi")
    assert raw.parse().max_output_tokens == 256  # the test catalogue's max_output_tokens
    assert upstream.app.state.bodies[-1]["max_tokens"] == 256
    hold = await db.fetchrow("SELECT * FROM reservations WHERE user_id = $1", member.user_id)
    assert json.loads(hold["metadata"])["max_tokens"] == 256
    assert hold["charged_mc"] <= hold["amount_mc"] and hold["status"] == "committed"


async def test_stream_over_the_upstream_is_charged_from_the_final_usage(inference, member, spend, db,
                                                                        models_file, upstream):
    client = sdk(inference, member.key)
    with client.responses.stream(model="up-chat", input="Tell me about holds.", max_output_tokens=64) as stream:
        events = list(stream)
        final = stream.get_final_response()  # the SDK's own accumulation of the events
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas).split() == WORDS and final.output_text == "".join(deltas)
    assert upstream.app.state.bodies[-1]["max_tokens"] == 64 and upstream.app.state.bodies[-1]["stream"] is True
    assert (final.usage.input_tokens, final.usage.output_tokens) == (PROMPT_TOKENS, len(WORDS))
    assert events[-1].type == "response.completed"
    [row] = await db.fetch("SELECT * FROM usage_attribution WHERE user_id = $1", member.user_id)
    expected = expected_mc(models_file, "up-chat", PROMPT_TOKENS, len(WORDS))
    assert (row["credits_used"], row["service_type"]) == (expected, "responses")
    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=member.user_id))
    assert (balance.used_millicredits, balance.held_millicredits) == (expected, 0)


async def test_function_tools_round_trip_through_items(inference, member, db, upstream):
    client = sdk(inference, member.key)
    first = client.responses.create(model="up-tools", input="Find the ledger.", tools=[TOOL], tool_choice="auto")
    [call] = [item for item in first.output if item.type == "function_call"]
    assert (call.name, call.arguments, call.call_id) == ("lookup", TOOL_ARGUMENTS, "call_up")
    sent = upstream.app.state.bodies[-1]
    assert sent["tools"] == [{"type": "function", "function": {k: v for k, v in TOOL.items() if k != "type"}}]
    second = client.responses.create(model="up-tools", tools=[TOOL], input=[
        {"role": "user", "content": "Find the ledger."},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "42 entries"}])
    assert second.status == "completed"
    messages = upstream.app.state.bodies[-1]["messages"]
    assert messages[1]["role"] == "assistant" and messages[1]["tool_calls"][0]["id"] == "call_up"
    assert messages[2] == {"role": "tool", "tool_call_id": "call_up", "content": "42 entries"}
    rows = await db.fetch("SELECT service_type FROM usage_attribution WHERE user_id = $1", member.user_id)
    assert [r["service_type"] for r in rows] == ["responses", "responses"]


async def test_a_responses_stream_cut_by_the_client_is_charged_for_what_it_produced(inference, member, spend, db):
    received: list[str] = []
    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream("POST", inference.base_url + PATH, headers={"Authorization": f"Bearer {member.key}"},
                                 json={"model": "up-slow", "input": "Write at length.", "stream": True}) as response:
            assert response.status_code == 200
            request_id = response.headers["X-Request-Id"]
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    event = json.loads(line[6:])
                    if event["type"] == "response.output_text.delta":
                        received.append(event["delta"])
                if len(received) >= 10:
                    break  # the client hangs up mid-stream
    row = await row_of(db, request_id)
    assert row is not None, "a cut stream left no usage"
    metadata = json.loads(row["request_metadata"])
    assert metadata["stream_cut"] is True and row["service_type"] == "responses"
    produced = len(litellm.encoding.encode("".join(received)))
    assert produced <= metadata["completion_tokens"] < 256, "charged for at least what the client received"
    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=member.user_id))
    assert (balance.used_millicredits, balance.held_millicredits) == (row["credits_used"], 0)
    await assert_invariants(db)


async def test_x_max_cost_caps_the_output_sent(inference, member, db, upstream):
    raw = sdk(inference, member.key).responses.with_raw_response.create(
        model="up-count", input="Hi", extra_headers={"X-Max-Cost": "0.05"})
    capped = int(raw.headers["X-Max-Tokens-Capped"])
    assert raw.parse().max_output_tokens == capped == upstream.app.state.bodies[-1]["max_tokens"] < 256
    hold = await db.fetchrow("SELECT * FROM reservations WHERE user_id = $1", member.user_id)
    assert hold["amount_mc"] <= 50 and hold["charged_mc"] <= hold["amount_mc"]


def test_the_openapi_schema_lists_responses(inference):
    schema = httpx.get(f"{inference.url}/openapi.json").json()
    assert "/api/v1/llm/responses" in schema["paths"]


async def test_a_provider_failing_before_any_output_releases_the_hold(inference, member, spend, db, upstream):
    before = upstream.calls["up-fail"]
    for stream in (False, True):
        response = httpx.post(inference.base_url + PATH, headers={"Authorization": f"Bearer {member.key}"},
                              json={"model": "up-fail", "input": "Hi", "stream": stream}, timeout=30)
        assert response.status_code == 502 and "released" in response.json()["error"]["message"]
    assert upstream.calls["up-fail"] > before
    statuses = await db.fetch("SELECT status FROM reservations WHERE user_id = $1", member.user_id)
    assert [r["status"] for r in statuses] == ["released", "released"]
    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=member.user_id))
    assert (balance.used_millicredits, balance.held_millicredits) == (0, 0)


async def test_a_responses_stream_never_outlives_its_hold(short_hold_inference, member, db):
    """up-slow takes ~5 s for 256 words; the hold lasts 3 s: the stream ends with an error event and is
    charged, in time, for what it produced."""
    events: list[dict] = []
    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream("POST", short_hold_inference.base_url + PATH,
                                 headers={"Authorization": f"Bearer {member.key}"},
                                 json={"model": "up-slow", "input": "Write at length.", "stream": True}) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
    assert events[-1]["type"] == "error" and events[-1]["code"] == "hold_deadline", events[-1]
    assert not any(e["type"] == "response.completed" for e in events)
    written = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    row = await row_of(db, response.headers["X-Request-Id"])
    hold = await db.fetchrow("SELECT * FROM reservations WHERE user_id = $1", member.user_id)
    assert hold["status"] == "committed" and not hold["late"], dict(hold)
    metadata = json.loads(row["request_metadata"])
    assert len(litellm.encoding.encode(written)) <= metadata["completion_tokens"] < 256


def test_idempotency_key_and_the_usage_report(inference, member):
    client = sdk(inference, member.key)
    headers = {"Idempotency-Key": "responses-order-7"}
    first = client.responses.with_raw_response.create(model="demo-chat", input="Hi", extra_headers=headers)
    assert first.headers["X-Request-Id"] == "responses-order-7"
    with pytest.raises(openai.ConflictError):
        client.responses.create(model="demo-chat", input="Hi", extra_headers=headers)
    usage = httpx.get(f"{inference.url}/api/v1/usage", params={"group_by": "service_type"},
                      headers={"Authorization": f"Bearer {member.key}"}).json()
    assert [(g["key"], g["requests"]) for g in usage["groups"]] == [("responses", 1)]


async def test_rate_limits_apply_to_responses_with_openais_headers(inference, member, admin, upstream, db):
    admin.SetRateLimit(admin_pb2.SetRateLimitRequest(key_id=member.key_id, requests_per_minute=1))
    headers = {"Authorization": f"Bearer {member.key}"}
    with httpx.stream("POST", inference.base_url + PATH, headers=headers,
                      json={"model": "up-chat", "input": "Hi", "stream": True}, timeout=30) as response:
        assert response.status_code == 200
        assert (response.headers["x-ratelimit-limit-requests"], response.headers["x-ratelimit-remaining-requests"]) \
            == ("1", "0")
        response.read()
    before = upstream.calls["up-chat"]
    refused = httpx.post(inference.base_url + PATH, headers=headers, json={"model": "up-chat", "input": "Hi"},
                         timeout=30)
    assert refused.status_code == 429 and int(refused.headers["retry-after-ms"]) > 0, refused.text
    assert upstream.calls["up-chat"] == before, "the refused call reached the model"
    holds = await db.fetch("SELECT status FROM reservations WHERE user_id = $1", member.user_id)
    assert [h["status"] for h in holds] == ["committed"], "the refused call held something"
