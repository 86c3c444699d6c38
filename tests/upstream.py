"""A local OpenAI-compatible upstream that LiteLLM calls over real HTTP.

Models: up-chat (normal), up-fail (HTTP 500), up-slow (a long, slow stream),
up-delay (answers after a pause), up-image (images), up-count (counts the
prompt it was sent as a provider would: every message and tool, by tiktoken),
up-tools (answers with a tool call, streamed as argument deltas, slowly).
Like a real provider, it never writes more than the `max_tokens` it was sent.
Counts every request, keeps every request body, and serves /slow-image.png
(counting fetches) for tests that check nobody fetches images while estimating.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from helpers import ServedApp

PROMPT_TOKENS = 12
WORDS = ["Credits", "are", "reserved", "before", "and", "committed", "after", "every", "call."]


def counted_prompt_tokens(body: dict) -> int:
    """What a provider would bill as input: everything it was sent, by tiktoken (LiteLLM's local copy)."""
    import litellm

    sent = json.dumps({k: body[k] for k in ("messages", "tools", "tool_choice", "response_format") if k in body})
    return len(litellm.encoding.encode(sent))


def tool_call_stream(model: str, created: int, arguments: str) -> list[dict]:
    """A tool call streamed as OpenAI does: the name first, then the arguments in pieces."""
    def chunk(delta: dict, finish: str | None = None) -> dict:
        return {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    first = chunk({"role": "assistant", "content": None, "tool_calls": [
        {"index": 0, "id": "call_up", "type": "function", "function": {"name": "lookup", "arguments": ""}}]})
    pieces = [arguments[i:i + 8] for i in range(0, len(arguments), 8)]
    return [first] + [chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in pieces] \
        + [chunk({}, "tool_calls")]


TOOL_ARGUMENTS = json.dumps({"query": "credits " * 60, "limit": 10})


def create_upstream() -> tuple[FastAPI, Counter]:
    app = FastAPI()
    calls: Counter = Counter()
    app.state.bodies = []  # every chat/image request body, in order
    app.state.image_fetches = 0

    @app.get("/slow-image.png")
    async def slow_image():
        app.state.image_fetches += 1
        await asyncio.sleep(5)
        return JSONResponse({"error": "too slow"}, status_code=504)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        model = body["model"]
        calls[model] += 1
        app.state.bodies.append(body)
        if model == "up-tools":
            return _tool_call_answer(model, body)
        if model == "up-fail":
            return JSONResponse({"error": {"message": "upstream exploded", "type": "server_error"}}, status_code=500)
        if model == "up-delay":
            await asyncio.sleep(float(request.headers.get("x-test-delay", "2")))
        words = (WORDS * (60 if model == "up-slow" else 1))[:body.get("max_tokens") or None]
        prompt_tokens = counted_prompt_tokens(body) if model == "up-count" else PROMPT_TOKENS
        created = int(time.time())
        if body.get("stream"):
            async def events():
                for i, word in enumerate(words):
                    chunk = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": created,
                             "model": model, "choices": [{"index": 0, "delta": {"content": word + " "},
                                                          "finish_reason": None}]}
                    if i == 0:
                        chunk["choices"][0]["delta"]["role"] = "assistant"
                    yield f"data: {json.dumps(chunk)}\n\n"
                    if model == "up-slow":
                        await asyncio.sleep(0.02)
                yield "data: " + json.dumps({"id": "chatcmpl-up", "object": "chat.completion.chunk",
                                             "created": created, "model": model,
                                             "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}) + "\n\n"
                if (body.get("stream_options") or {}).get("include_usage"):
                    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words),
                             "total_tokens": prompt_tokens + len(words)}
                    yield "data: " + json.dumps({"id": "chatcmpl-up", "object": "chat.completion.chunk",
                                                 "created": created, "model": model, "choices": [],
                                                 "usage": usage}) + "\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        return {"id": "chatcmpl-up", "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words)},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(words),
                          "total_tokens": prompt_tokens + len(words)}}

    @app.post("/v1/images/generations")
    async def images(request: Request):
        body = await request.json()
        calls[body.get("model", "")] += 1
        app.state.bodies.append(body)
        n = int(body.get("n") or 1)
        return {"created": int(time.time()), "data": [{"url": f"http://upstream.invalid/img/{i}.png"}
                                                      for i in range(n)]}

    return app, calls


def _tool_call_answer(model: str, body: dict):
    created = int(time.time())
    chunks = tool_call_stream(model, created, TOOL_ARGUMENTS)
    if body.get("stream"):
        async def events():
            for chunk in chunks:
                yield f"data: {json.dumps(chunk)}\n\n"
                await asyncio.sleep(0.05)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")
    call = {"id": "call_up", "type": "function", "function": {"name": "lookup", "arguments": TOOL_ARGUMENTS}}
    return {"id": "chatcmpl-up", "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                         "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 40, "total_tokens": PROMPT_TOKENS + 40}}


class Upstream(ServedApp):
    """The upstream served on a local port, in a background thread."""

    def __init__(self, port: int):
        app, self.calls = create_upstream()
        super().__init__(app, port)
        self.app = app

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"
