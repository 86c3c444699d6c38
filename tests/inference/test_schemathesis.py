"""Fuzzing the REST API down to the billed path: valid requests with one field mutated at a time
(tests/rest_fuzz.py), checked by schemathesis against the OpenAPI schema (never a 5xx, never an
undocumented status), then against the database: every 200 of a billed operation left exactly one
attribution row charged what the response reported, every other answer none, no hold is left, and
the invariants hold."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import schemathesis
from hypothesis import HealthCheck, given, note, settings
from invariants import violations
from rest_fuzz import Request, Target, find_operation, one_field_mutations, send, status_table

from credit_service.money import format_credits

from .conftest import make_key

CHAT = "/api/v1/llm/chat/completions"
IMAGES = "/api/v1/llm/images/generations"
# Models a mutation may name: every kind the catalogue serves, and names it does not (up-fail, up-slow and
# up-delay are left out: a provider failing is a documented 502, and slow models only cost time).
MODELS = ["demo-chat", "up-chat", "up-count", "up-tools", "demo-image", "up-image", "gpt-4o-mini", "no-such-model"]
BILLED = ("chat", "chat-stream", "images", "embeddings", "responses", "responses-stream")
EMBEDDINGS = "/api/v1/llm/embeddings"
RESPONSES = "/api/v1/llm/responses"


def chat_body(stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "up-chat", "messages": [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "Hello", "name": "fuzzer"}],
        "max_tokens": 16, "temperature": 0.5, "top_p": 1, "n": 1, "stop": ["\n\n"], "seed": 7,
        "user": "end-user-1", "power_level": "low", "task_type": "fuzz"}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


CHAT_FIELDS = tuple(("body", name) for name in (
    "model", "messages", "max_tokens", "max_completion_tokens", "n", "stream", "stream_options", "temperature",
    "top_p", "presence_penalty", "frequency_penalty", "stop", "seed", "response_format", "tools", "tool_choice",
    "parallel_tool_calls", "user", "power_level", "task_type", "unknown_field")) + (
    ("body", "messages", 1, "role"), ("body", "messages", 1, "content"), ("body", "messages", 1, "name"),
    ("body", "messages", 0, "content"), ("headers", "OpenAI-Organization"))
CHAT_EDGES: dict[tuple[str | int, ...], list[Any]] = {
    ("body", "model"): MODELS,
    ("body", "max_tokens"): [1, 2, 256, 257, 1_000_000, 1_000_001, 0, -1, 1.5, "16"],
    ("body", "max_completion_tokens"): [1, 64, 1_000_000, 0],
    ("body", "n"): [1, 2, 3, 16, 17, 0],
    ("body", "stream"): [True, False, None, "true"],
    ("body", "stream_options"): [{"include_usage": False}, {}, None],
    ("body", "temperature"): [0, 2, 2.0001, -0.1, None],
    ("body", "top_p"): [0, 0.5, 1.01],
    ("body", "presence_penalty"): [-2, 2, 2.5],
    ("body", "stop"): ["\n", ["a", "b", "c", "d"], [], "", None],
    ("body", "seed"): [0, -(2**63), 2**63 - 1, 2**63],
    ("body", "response_format"): [{"type": "text"}, {"type": "json_object"}, {}],
    ("body", "tools"): [[{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
                        [], [{"type": "function", "function": {"name": "bad name"}}]],
    ("body", "tool_choice"): ["none", "auto", "required", {"type": "function", "function": {"name": "lookup"}}],
    ("body", "user"): ["alice", "", "x" * 256, "x" * 257, "a\nb", "ü" * 10],
    ("body", "power_level"): ["high", "", "x" * 65, "\x00"],
    ("body", "messages", 1, "role"): ["system", "developer", "assistant", "tool", "function", "robot"],
    ("body", "messages", 1, "content"): ["", "x" * 4000, [{"type": "text", "text": "hi"}],
                                         [{"type": "image_url", "image_url": {"url": "https://images.invalid/a.png",
                                                                              "detail": "low"}}],
                                         [{"type": "audio", "audio": {}}], None],
    ("body", "messages", 1, "name"): ["n", "a" * 64, "a" * 65, "bad name"],
    ("headers", "OpenAI-Organization"): ["", "no-such-org", "x" * 200, "bad org"],
}
IMAGE_FIELDS = tuple(("body", name) for name in (
    "model", "prompt", "n", "size", "quality", "style", "response_format", "user", "unknown_field")) + (
    ("headers", "OpenAI-Organization"),)
IMAGE_EDGES: dict[tuple[str | int, ...], list[Any]] = {
    ("body", "model"): MODELS,
    ("body", "prompt"): ["", "x", "x" * 32_000, "x" * 32_001],
    ("body", "n"): [1, 2, 10, 11, 0],
    ("body", "size"): ["256x256", "512x512", "1792x1024", "auto", "1x1", None],
    ("body", "quality"): ["standard", "hd", "low", "high", "auto", "ultra", None],
    ("body", "style"): ["vivid", "natural", "oil"],
    ("body", "response_format"): ["url", "b64_json", "png"],
    ("body", "user"): ["bob", "\x07"],
    ("headers", "OpenAI-Organization"): ["", "no-such-org"],
}
EMBED_FIELDS = tuple(("body", name) for name in (
    "model", "input", "encoding_format", "dimensions", "user", "unknown_field")) + (("headers", "OpenAI-Organization"),)
EMBED_EDGES: dict[tuple[str | int, ...], list[Any]] = {
    ("body", "model"): MODELS + ["up-embed", "demo-embed", "up-embed", "demo-embed"],
    ("body", "input"): ["x", ["a", "b"], [1, 2, 3], [[1], [2, 3]], ["ü" * 50] * 3, "", [], [[]], [-1], [1.5],
                        ["a", 1], {"a": 1}, 42, None, [True], ["x"] * 2049, [[1] * 9000]],
    ("body", "encoding_format"): ["float", "base64", "int8", None],
    ("body", "dimensions"): [1, 8, 0, -1, None],
    ("body", "user"): ["alice", "", "x" * 256, "x" * 257, "a\nb"],
    ("headers", "OpenAI-Organization"): ["", "no-such-org"],
}


def responses_body(stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "up-chat", "instructions": "Be brief.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hello"}]}],
        "max_output_tokens": 16, "temperature": 0.5, "top_p": 1, "user": "end-user-1", "power_level": "low",
        "task_type": "fuzz"}
    if stream:
        body["stream"] = True
    return body


RESPONSES_FIELDS = tuple(("body", name) for name in (
    "model", "input", "instructions", "max_output_tokens", "stream", "temperature", "top_p", "tools", "tool_choice",
    "text", "user", "power_level", "previous_response_id", "store", "unknown_field")) + (
    ("body", "input", 0, "content"), ("body", "input", 0, "role"), ("headers", "OpenAI-Organization"))
RESPONSES_EDGES: dict[tuple[str | int, ...], list[Any]] = {
    ("body", "model"): MODELS,
    ("body", "input"): ["x", "", [], 42, None, [{"type": "reasoning", "id": "rs_1"}],
                        [{"role": "user", "content": "hi"}, {"type": "function_call", "call_id": "c1",
                                                             "name": "lookup", "arguments": "{}"},
                         {"type": "function_call_output", "call_id": "c1", "output": "42"}]],
    ("body", "max_output_tokens"): [1, 16, 256, 257, 1_000_000, 1_000_001, 0, -1, 1.5, "16"],
    ("body", "stream"): [True, False, None, "true"],
    ("body", "tools"): [[{"type": "function", "name": "lookup", "parameters": {"type": "object"}}], [],
                        [{"type": "web_search"}], [{"type": "function", "name": "bad name"}]],
    ("body", "tool_choice"): ["none", "auto", "required", {"type": "function", "name": "lookup"},
                              {"type": "file_search"}],
    ("body", "text"): [{"format": {"type": "text"}}, {"format": {"type": "json_object"}},
                       {"format": {"type": "json_schema", "name": "x"}}, {}],
    ("body", "previous_response_id"): ["resp_1", "", None],
    ("body", "store"): [True, False, None],
    ("body", "input", 0, "content"): ["", "x" * 4000, [{"type": "input_image", "image_url":
                                                        "https://images.invalid/a.png", "detail": "low"}],
                                      [{"type": "input_file", "file_id": "f"}], None],
    ("body", "input", 0, "role"): ["system", "developer", "assistant", "tool", "robot"],
    ("headers", "OpenAI-Organization"): ["", "no-such-org"],
}
USAGE_EDGES: dict[tuple[str | int, ...], list[Any]] = {
    ("query", "start"): ["2020-01-01", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59-14:00", "yesterday"],
    ("query", "end"): ["2100-01-01T00:00:00+01:00", "1970-01-01", ""],
    ("query", "group_by"): ["model", "service_type", "day", "user", ""],
    ("query", "limit"): [1, 1000, 1001, 0, -5],
    ("headers", "OpenAI-Organization"): ["", "no-such-org"],
}


@dataclass
class Outcome:
    target: str
    request_id: str
    status: int
    mutation: str
    cost: str | None = None  # what the response said it charged (X-Cost-Incurred, or a stream's x_billing)
    stream: bool = False


def stream_cost(response: httpx.Response) -> tuple[str | None, bool]:
    """(cost reported by the last chunk, whether the stream ended with [DONE] or an error event); a Responses
    stream's (named events): the cost in response.completed / response.incomplete, or an error event."""
    if response.text.startswith("event: "):
        data = [line[len("data: "):] for block in response.text.split("\n\n") for line in block.split("\n")
                if line.startswith("data: ")]
        last = json.loads(data[-1]) if data else {}
        if last.get("type") in ("response.completed", "response.incomplete"):
            return (last.get("x_billing") or {}).get("cost_incurred"), "cost_incurred" in (last.get("x_billing") or {})
        return None, last.get("type") == "error"
    events = [e[len("data: "):] for e in response.text.split("\n\n") if e.startswith("data: ")]
    if events and events[-1] == "[DONE]":
        last = json.loads(events[-2]) if len(events) > 1 else {}
        billing = last.get("x_billing") or {}
        return billing.get("cost_incurred"), "cost_incurred" in billing
    return None, bool(events) and "error" in json.loads(events[-1])


async def settled(database_url: str, user_id: str, expected_rows: int) -> tuple[int, int]:
    """Waits (bounded) until the user's holds are gone and the attributions are in; returns (held, rows)."""
    conn = await asyncpg.connect(database_url)
    try:
        for _ in range(100):
            held = await conn.fetchval("SELECT count(*) FROM reservations WHERE user_id = $1 AND status = 'held'",
                                       user_id)
            rows = await conn.fetchval("SELECT count(*) FROM usage_attribution WHERE user_id = $1", user_id)
            if held == 0 and rows >= expected_rows:
                break
            await asyncio.sleep(0.1)
        return held, rows
    finally:
        await conn.close()


async def database_view(database_url: str, user_id: str, org_id: str):
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("""SELECT request_metadata->>'request_id' AS request_id, request_id AS reserve_id,
                                          credits_used FROM usage_attribution WHERE user_id = $1""", user_id)
        used = await conn.fetchval("SELECT used_mc FROM allocations WHERE org_id = $1 AND user_id = $2",
                                   org_id, user_id)
        return rows, used, await violations(conn)
    finally:
        await conn.close()


def test_one_field_mutations_reach_the_billed_path_and_bill_every_200_once(inference, world, admin, database_url):
    org_id, user_id = world.funded_member(allocation_mc=100_000_000)  # 100,000 credits: never the limit here
    key, key_id = make_key(admin, user_id)
    schema = schemathesis.openapi.from_url(f"{inference.url}/openapi.json")
    org = {"OpenAI-Organization": org_id}
    targets = [
        Target("chat", "POST", CHAT, lambda: Request(body=chat_body(False), headers=dict(org)), CHAT_FIELDS,
               CHAT_EDGES),
        Target("chat-stream", "POST", CHAT, lambda: Request(body=chat_body(True), headers=dict(org)), CHAT_FIELDS,
               CHAT_EDGES),
        Target("images", "POST", IMAGES, lambda: Request(body={"model": "up-image", "prompt": "a ledger", "n": 1,
                                                                "size": "1024x1024", "quality": "standard",
                                                                "user": "end-user-1"}, headers=dict(org)),
               IMAGE_FIELDS, IMAGE_EDGES),
        Target("embeddings", "POST", EMBEDDINGS,
               lambda: Request(body={"model": "up-embed", "input": ["a ledger", "a hold"], "user": "end-user-1"},
                               headers=dict(org)), EMBED_FIELDS, EMBED_EDGES),
        Target("responses", "POST", RESPONSES, lambda: Request(body=responses_body(False), headers=dict(org)),
               RESPONSES_FIELDS, RESPONSES_EDGES),
        Target("responses-stream", "POST", RESPONSES, lambda: Request(body=responses_body(True), headers=dict(org)),
               RESPONSES_FIELDS, RESPONSES_EDGES),
        Target("usage", "GET", "/api/v1/usage",
               lambda: Request(query={"start": "2020-01-01T00:00:00Z", "end": "2100-01-01T00:00:00Z",
                                      "group_by": "model", "limit": 50}, headers=dict(org)),
               (("query", "start"), ("query", "end"), ("query", "group_by"), ("query", "limit"),
                ("headers", "OpenAI-Organization")), USAGE_EDGES),
        Target("balance", "GET", "/api/v1/credits/balance", lambda: Request(headers=dict(org)),
               (("headers", "OpenAI-Organization"),), USAGE_EDGES),
        Target("models", "GET", "/api/v1/llm/models", lambda: Request(headers=dict(org)),
               (("headers", "OpenAI-Organization"),), USAGE_EDGES),
    ]
    examples = {"chat": 250, "chat-stream": 200, "images": 120, "embeddings": 80, "responses": 70,
                "responses-stream": 60, "usage": 100, "balance": 30, "models": 20}
    outcomes: list[Outcome] = []
    counts: Counter[tuple[str, int]] = Counter()

    with httpx.Client(base_url=inference.url, timeout=60) as client:
        def fuzzer(target: Target, operation: Any):
            @given(request=one_field_mutations(target, operation))
            @settings(max_examples=examples[target.name], deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def fuzz(request: Request) -> None:
                note(request.mutation)
                request_id = f"fz-{uuid.uuid4().hex}"
                headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": request_id}
                response = send(client, operation, target, request, headers)
                counts[target.name, response.status_code] += 1
                outcome = Outcome(target.name, request_id, response.status_code, request.mutation)
                outcomes.append(outcome)
                if target.name not in BILLED or response.status_code != 200:
                    return
                assert response.headers.get("x-request-id") == request_id, request.mutation
                if response.headers.get("content-type", "").startswith("text/event-stream"):
                    outcome.stream = True
                    outcome.cost, ended = stream_cost(response)
                    assert ended, f"{request.mutation}: a 200 stream ended without [DONE] or an error event"
                else:
                    outcome.cost = response.headers.get("x-cost-incurred")
                    assert outcome.cost is not None, f"{request.mutation}: a billed 200 without X-Cost-Incurred"

            return fuzz

        for target in targets:
            fuzzer(target, find_operation(schema, target.method, target.path))()

        billed_200s = [o for o in outcomes if o.target in BILLED and o.status == 200]
        held, _ = asyncio.run(settled(database_url, user_id, len(billed_200s)))
        rows, used, found = asyncio.run(database_view(database_url, user_id, org_id))
        usage = client.get("/api/v1/usage", params={"limit": 1000}, headers={"Authorization": f"Bearer {key}"})
        balance = client.get("/api/v1/credits/balance", headers={"Authorization": f"Bearer {key}"}).json()

    print(f"\nREST one-field fuzz, statuses by operation:\n{status_table(counts)}")
    streams = sum(o.stream for o in billed_200s)
    print(f"billed 200s: {len(billed_200s)} ({streams} streamed), attribution rows: {len(rows)}, "
          f"charged: {format_credits(sum(r['credits_used'] for r in rows))} credits, holds left: {held}")
    for name in BILLED + ("usage", "balance", "models"):
        # Most requests are meant to be valid; a tenth would be a fuzzer stuck at validation again.
        assert counts[name, 200] * 10 >= examples[name], f"too few 200s for {name}:\n{status_table(counts)}"
    assert streams > 0, "no streamed 200"

    # Every 200 of a billed operation has exactly one attribution row, charged what the response said; every
    # other answer (a rejected request, a refused hold) has none: no charge without output.
    by_request: dict[str, list[asyncpg.Record]] = {}
    for row in rows:
        by_request.setdefault(row["request_id"], []).append(row)
    wrong = []
    for o in outcomes:
        if o.target not in BILLED:
            continue
        found_rows = by_request.pop(o.request_id, [])
        if len(found_rows) != (1 if o.status == 200 else 0):
            wrong.append(f"{o.target} {o.status} {o.mutation}: {len(found_rows)} attribution rows")
        elif found_rows and found_rows[0]["reserve_id"] != f"{key_id}:{o.request_id}":
            wrong.append(f"{o.target} {o.mutation}: reserved as {found_rows[0]['reserve_id']}")
        elif found_rows and o.cost is not None and format_credits(found_rows[0]["credits_used"]) != o.cost:
            wrong.append(f"{o.target} {o.mutation}: reported {o.cost}, charged "
                         f"{format_credits(found_rows[0]['credits_used'])}")
    wrong += [f"attribution row of no request this test sent: {r}" for r in by_request]
    assert not wrong, f"{len(wrong)} billing mismatches, e.g. {wrong[:5]}"
    assert held == 0, f"{held} holds of the fuzzed user were left 'held'"
    assert not found, f"invariants violated: {found}"
    # The service's own views agree with the rows.
    assert usage.status_code == 200 and usage.json()["total_requests"] == len(billed_200s), usage.text[:300]
    assert balance["used_millicredits"] == used == sum(r["credits_used"] for r in rows), balance
    assert balance["held_millicredits"] == 0, balance
