"""Issue 11: every model call billed exactly once, whatever the client or the input does.

Each test reproduces one way the edge lost or skewed a charge, against the real
REST service, the real authority and the local upstream (which counts calls,
keeps the bodies it was sent and bills prompts as a provider would).
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import litellm
import pytest
from conftest import AuthorityProcess
from media_support import wav
from rest_support import InferenceProcess, make_key
from upstream import TOOL_ARGUMENTS

from credit.v1 import admin_pb2, authority_pb2

MESSAGES = [{"role": "user", "content": "Say hello."}]
CHAT = "/chat/completions"


def post(inference: InferenceProcess, key: str, path: str, body: dict | str, **headers: str) -> httpx.Response:
    content = body if isinstance(body, str) else json.dumps(body)
    return httpx.post(inference.base_url + path, content=content, timeout=60,
                      headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", **headers})


async def reservations(db, user_id: str) -> list[dict]:
    rows = await db.fetch("""SELECT r.*, u.request_metadata FROM reservations r
                             LEFT JOIN usage_attribution u USING (reservation_id)
                             WHERE r.user_id = $1 ORDER BY r.created_at""", user_id)
    return [{**r, "metadata": json.loads(r["metadata"]),
             "request_metadata": json.loads(r["request_metadata"]) if r["request_metadata"] else None}
            for r in rows]


async def settled(db, user_id: str, count: int, timeout: float = 20) -> list[dict]:
    """The user's reservations once `count` of them are no longer held."""
    deadline = time.monotonic() + timeout
    while True:
        rows = await reservations(db, user_id)
        done = [r for r in rows if r["status"] != "held"]
        if len(done) >= count or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.1)


def upstream_calls(upstream) -> int:
    return sum(upstream.calls.values())


# ---- client-controlled strings are refused before anything is held ------------------------------

HOSTILE = [
    ("user NUL, streamed", CHAT, {"model": "up-chat", "messages": MESSAGES, "stream": True, "user": "a\u0000b"},
     "user"),
    ("user NUL", CHAT, {"model": "up-chat", "messages": MESSAGES, "user": "a\u0000b"}, "user"),
    ("power_level control character", CHAT, {"model": "up-chat", "messages": MESSAGES, "power_level": "hi\u001b[2J"},
     "power_level"),
    ("task_type C1 control", CHAT, {"model": "up-chat", "messages": MESSAGES, "task_type": "x\u0085y"}, "task_type"),
    ("user of 64 KiB", CHAT, {"model": "up-chat", "messages": MESSAGES, "user": "u" * 65536}, "user"),
    ("message name", CHAT, {"model": "up-chat", "messages": [{"role": "user", "content": "x", "name": "a b\u0000"}]},
     "name"),
    ("unknown content part", CHAT,
     {"model": "up-chat", "messages": [{"role": "user", "content": [{"type": "input_video", "url": "x"}]}]},
     "content"),
    ("unknown image detail", CHAT, {"model": "up-chat", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/x.png", "detail": "ultra"}}]}]}, "detail"),
    ("tool without a function name", CHAT, {"model": "up-chat", "messages": MESSAGES,
                                            "tools": [{"type": "function", "function": {"name": "a\u0000"}}]},
     "name"),
    ("image size", "/images/generations", {"model": "up-image", "prompt": "a cat", "size": "1024x1024\u0000"},
     "size"),
    ("image quality", "/images/generations", {"model": "up-image", "prompt": "a cat", "quality": "ultra\n"},
     "quality"),
    ("image user", "/images/generations", {"model": "up-image", "prompt": "a cat", "user": "\u0007"}, "user"),
]


@pytest.mark.parametrize("case, path, body, field", HOSTILE, ids=[c[0] for c in HOSTILE])
async def test_hostile_strings_are_refused_before_anything_is_held(inference, member, upstream, db,
                                                                   case, path, body, field):
    before = upstream_calls(upstream)
    response = post(inference, member.key, path, body)
    assert response.status_code == 400, (case, response.status_code, response.text)
    assert field in response.json()["error"]["message"], response.text
    assert upstream_calls(upstream) == before, "the model was called"
    assert await reservations(db, member.user_id) == [], "something was held"


@pytest.mark.parametrize("field", ["user", "power_level", "task_type"])
async def test_a_lone_surrogate_escape_is_refused_before_anything_is_held(inference, member, upstream, db, field):
    before = upstream_calls(upstream)
    raw = '{"model": "up-chat", "messages": [{"role": "user", "content": "hi"}], "%s": "a\\ud800b"}' % field
    response = post(inference, member.key, CHAT, raw)
    assert response.status_code == 400, response.text
    assert "surrogate" in response.json()["error"]["message"]
    assert upstream_calls(upstream) == before
    assert await reservations(db, member.user_id) == []


# ---- the hold is the worst case of everything sent --------------------------------------------

BIG_TOOLS = [{"type": "function", "function": {
    "name": f"tool_{i}", "description": "Looks up the credit balance of a member of an organization. " * 8,
    "parameters": {"type": "object", "properties": {"member": {"type": "string", "description": "who " * 20}}}}}
    for i in range(40)]


async def test_the_hold_covers_tools_and_the_provider_is_sent_the_output_cap(inference, member, upstream, db):
    response = post(inference, member.key, CHAT, {"model": "up-count", "messages": MESSAGES, "max_tokens": 1,
                                                  "tools": BIG_TOOLS, "tool_choice": "auto"})
    assert response.status_code == 200, response.text
    sent = upstream.app.state.bodies[-1]
    assert sent["max_tokens"] == 1
    [row] = await reservations(db, member.user_id)
    prompt = row["request_metadata"]["prompt_tokens"]
    assert prompt > 3000, "the upstream billed the tools as input"
    assert not row["overrun"] and row["charged_mc"] <= row["amount_mc"], row


async def test_without_max_tokens_the_provider_gets_the_budget_the_hold_paid_for(inference, member, upstream, db):
    response = post(inference, member.key, CHAT, {"model": "up-count", "messages": MESSAGES, "n": 2})
    assert response.status_code == 200, response.text
    sent = upstream.app.state.bodies[-1]
    assert sent["max_tokens"] == 256  # the test catalogue's max_output_tokens
    [row] = await reservations(db, member.user_id)
    assert row["metadata"]["estimate_millicredits"] == row["amount_mc"]
    assert not row["overrun"] and row["charged_mc"] <= row["amount_mc"]


async def test_no_image_is_fetched_while_estimating(inference, member, upstream, db):
    fetches = upstream.app.state.image_fetches
    image = {"type": "image_url", "image_url": {"url": f"http://127.0.0.1:{upstream.port}/slow-image.png",
                                                 "detail": "high"}}
    body = {"model": "up-count", "messages": [{"role": "user", "content": [{"type": "text", "text": "What?"},
                                                                           image]}]}
    response = post(inference, member.key, CHAT, body)
    assert response.status_code == 200, response.text
    assert upstream.app.state.image_fetches == fetches, "the service fetched the image"
    [row] = await reservations(db, member.user_id)
    assert row["charged_mc"] <= row["amount_mc"]


# ---- streams ----------------------------------------------------------------------------------

async def test_a_cut_stream_is_charged_for_the_tool_call_arguments_it_produced(inference, member, db):
    seen: list[str] = []
    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream("POST", inference.base_url + CHAT, headers={"Authorization": f"Bearer {member.key}"},
                                 json={"model": "up-tools", "messages": MESSAGES, "stream": True,
                                       "tools": BIG_TOOLS[:1]}) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    for choice in json.loads(line[6:]).get("choices", []):
                        for call in choice.get("delta", {}).get("tool_calls") or []:
                            seen.append(call["function"].get("arguments") or "")
                if len(seen) >= 12:
                    break  # cut mid-arguments
    [row] = await settled(db, member.user_id, 1)
    assert row["status"] == "committed"
    encoding = litellm.encoding  # tiktoken's cl100k_base, as LiteLLM ships it (no download)
    assert len("".join(seen)) < len(TOOL_ARGUMENTS), "the stream was not cut"
    assert row["request_metadata"]["completion_tokens"] >= len(encoding.encode("".join(seen))) > 0
    assert row["request_metadata"]["stream_cut"] is True


async def test_a_stream_never_outlives_its_hold(short_hold_inference, member, db):
    """up-slow takes ~5 s for 256 words; the hold lasts 3 s: the stream is stopped and charged in time."""
    events: list[dict] = []
    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream("POST", short_hold_inference.base_url + CHAT,
                                 headers={"Authorization": f"Bearer {member.key}"},
                                 json={"model": "up-slow", "messages": MESSAGES, "stream": True}) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    events.append(json.loads(line[6:]))
    assert events[-1].get("error", {}).get("code") == "hold_deadline", events[-1]
    [row] = await settled(db, member.user_id, 1)
    assert row["status"] == "committed" and not row["late"], row
    assert 0 < row["request_metadata"]["completion_tokens"] < 256


# ---- idempotency and keys ---------------------------------------------------------------------

async def test_one_idempotency_key_in_flight_twice_calls_the_model_once(inference, member, upstream):
    before = upstream.calls["up-delay"]
    headers = {"Authorization": f"Bearer {member.key}", "Idempotency-Key": "twice-in-flight-1"}
    async with httpx.AsyncClient(timeout=30) as client:
        async def one() -> int:
            response = await client.post(inference.base_url + CHAT, headers=headers,
                                         json={"model": "up-delay", "messages": MESSAGES})
            return response.status_code

        statuses = sorted(await asyncio.gather(one(), one()))
    assert statuses == [200, 409]
    assert upstream.calls["up-delay"] == before + 1


async def test_an_ex_members_service_key_stops_billing(inference, world, admin):
    org_id = world.org(pool_mc=100_000)
    owner, colleague = world.user(), world.user()
    world.member(org_id, owner, role=admin_pb2.MEMBER_ROLE_ADMIN)
    world.member(org_id, colleague, allocation_mc=50_000)
    key, _ = make_key(admin, owner, org_id, service=True)
    body = {"model": "up-chat", "messages": MESSAGES, "user": colleague}
    assert post(inference, key, CHAT, body).status_code == 200
    admin.RemoveMember(admin_pb2.RemoveMemberRequest(org_id=org_id, user_id=owner))
    await asyncio.sleep(1.0)  # past the tests' key cache (INFERENCE_KEY_CACHE_SECONDS=0.5)
    response = post(inference, key, CHAT, body)
    assert response.status_code == 401, response.text


# ---- where a charge can still be lost: a REST process killed mid-call -------------------------

async def test_a_rest_process_killed_mid_call_loses_at_most_the_calls_in_flight(
        authority: AuthorityProcess, tokens, models_file, upstream, world, admin, db):
    """The documented bound (README, Reliability): calls whose answer had not been committed when
    the REST process died expire uncharged; nothing else is lost or left held."""
    org_id, user_id = world.funded_member(allocation_mc=100_000)
    key, _ = make_key(admin, user_id)
    process = InferenceProcess(authority, tokens.spend, models_file,
                               extra_env={"INFERENCE_RESERVE_TTL_SECONDS": "2"}).start()
    try:
        done = post(process, key, CHAT, {"model": "up-chat", "messages": MESSAGES})
        assert done.status_code == 200
        before = upstream.calls["up-delay"]
        in_flight = 4
        async with httpx.AsyncClient(timeout=30) as client:
            calls = [asyncio.create_task(client.post(
                process.base_url + CHAT, headers={"Authorization": f"Bearer {key}"},
                json={"model": "up-delay", "messages": MESSAGES})) for _ in range(in_flight)]
            while upstream.calls["up-delay"] < before + in_flight:
                await asyncio.sleep(0.05)
            process.proc.kill()
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(o, httpx.HTTPError) for o in outcomes), outcomes
    finally:
        process.stop()
    deadline = time.monotonic() + 20
    while (rows := await reservations(db, user_id)) and any(r["status"] == "held" for r in rows):
        assert time.monotonic() < deadline, rows
        await asyncio.sleep(0.2)
    unbilled = [r for r in rows if r["status"] == "expired"]
    committed = [r for r in rows if r["status"] == "committed"]
    assert len(committed) == 1 and committed[0]["request_metadata"] is not None
    assert len(unbilled) <= in_flight and len(rows) == 1 + in_flight
    print(f"\nREST-KILL-FIGURES in_flight={in_flight} unbilled={len(unbilled)} committed={len(committed)}")


# ---- embeddings, transcriptions, moderations: a client that leaves mid-call ---------------------

def media_request(mode: str) -> tuple[str, dict]:
    """(path, httpx keyword arguments) of a call to a model that answers after a pause."""
    if mode == "audio_transcription":
        return "/audio/transcriptions", {"files": {"file": ("a.wav", wav(1.5), "audio/wav")},
                                         "data": {"model": "up-transcribe-delay"}}
    if mode == "embedding":
        return "/embeddings", {"json": {"model": "up-embed-delay", "input": ["a client", "that leaves"]}}
    return "/moderations", {"json": {"model": "up-moderate-delay", "input": "a client that leaves"}}


@pytest.mark.parametrize("mode", ["embedding", "audio_transcription", "moderation"])
async def test_a_client_that_leaves_mid_call_is_billed_exactly_once(inference, member, upstream, db, spend, mode):
    """The settlement runs on without the client: billed once (moderations: released, no row), nothing held."""
    path, request = media_request(mode)
    model = (request.get("json") or request.get("data"))["model"]
    before = upstream.calls[model]
    with pytest.raises(httpx.ReadTimeout):  # the model answers after MEDIA_DELAY_SECONDS: the client has left
        httpx.post(inference.base_url + path, headers={"Authorization": f"Bearer {member.key}"}, timeout=0.25,
                   **request)
    [row] = await settled(db, member.user_id, 1)
    assert upstream.calls[model] == before + 1, "the model was called once"
    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=member.user_id))
    assert balance.held_millicredits == 0, "a hold was left behind"
    if mode == "moderation":
        assert row["status"] == "released" and row["request_metadata"] is None
        assert balance.used_millicredits == 0
        return
    assert row["status"] == "committed" and row["service_type"] == mode
    assert row["request_metadata"] is not None, "the call left no attribution row"
    assert 0 < row["charged_mc"] <= row["amount_mc"] and balance.used_millicredits == row["charged_mc"]
    assert await db.fetchval("SELECT count(*) FROM usage_attribution WHERE reservation_id = $1",
                             row["reservation_id"]) == 1
