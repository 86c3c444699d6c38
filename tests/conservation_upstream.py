"""A local OpenAI-compatible upstream that knows which request each call was.

The conservation test puts `rid=<32 hex>` in the last user message (or the
image prompt) of every request; this upstream records, per marker, how many
calls it served and how many of them produced output (a body, or at least one
stream chunk). Options in the same text shape the answer:

* `chunks=N`  — N output pieces, one token each (capped by the request's
  max_tokens / max_completion_tokens, as a real provider does);
* `tools=1`   — a streamed tool call whose arguments arrive in N deltas;
* `pause=MS`  — a pause between stream chunks, so a client can cut mid-way.

Model `up-fail` answers HTTP 500 without output; `up-image` makes images.
Embeddings (`up-embed`; `up-embed-fail` answers 500), transcriptions (the
marker in the form's `prompt`; usage in whole seconds of the WAV sent) and
moderations answer in OpenAI's wire format.
Usage is reported as a provider would: the prompt (messages and tools)
counted with the same tokenizer the service uses, and every output token.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import re
import threading
import time
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # as the service: no network

import litellm
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from helpers import ServedApp

MARKER = re.compile(r"rid=([0-9a-f]{32})")
OPTION = re.compile(r"\b(chunks|tools|pause)=(\d+)")
TOKENIZER_MODEL = "openai/up-chat"  # what the catalogue entry resolves to in the service
# One token each, and varied: LiteLLM stops a stream that repeats one chunk 100 times.
WORDS = (" credit", " ledger", " hold", " charge", " account", " balance", " usage", " model", " token", " price")
ARG_WORDS = (" lorem", " ipsum", " dolor", " sit", " amet", " alpha", " beta", " gamma", " delta", " omega")
ARGS_OPEN, ARGS_CLOSE = '{"q":"', '"}'


@dataclass
class Served:
    calls: int = 0
    outputs: int = 0  # calls that returned a body or sent at least one chunk


@dataclass
class Ledger:
    """What the upstream served, by marker (shared between the server thread and the test)."""

    served: dict[str, Served] = field(default_factory=dict)
    unmarked: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def called(self, marker: str | None) -> None:
        with self.lock:
            if marker is None:
                self.unmarked += 1
            else:
                self.served.setdefault(marker, Served()).calls += 1

    def produced(self, marker: str | None) -> None:
        if marker is not None:
            with self.lock:
                self.served.setdefault(marker, Served()).outputs += 1

    def snapshot(self) -> dict[str, Served]:
        with self.lock:
            return {m: Served(s.calls, s.outputs) for m, s in self.served.items()}


@dataclass(frozen=True)
class Plan:
    """The answer one chat request gets."""

    model: str
    chunks: int
    tools: bool
    pause: float
    prompt_tokens: int
    max_tokens: int | None

    def pieces(self) -> list[str]:
        n = self.chunks if self.max_tokens is None else min(self.chunks, self.max_tokens)
        if not self.tools:
            return [WORDS[i % len(WORDS)] for i in range(max(n, 1))]
        middle = max(n - count_tokens(ARGS_OPEN + ARGS_CLOSE), 1)
        return [ARGS_OPEN] + [ARG_WORDS[i % len(ARG_WORDS)] for i in range(middle)] + [ARGS_CLOSE]

    def usage(self) -> dict[str, int]:
        completion = count_tokens("".join(self.pieces()))
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}

    def finish_reason(self) -> str:
        return "tool_calls" if self.tools else "stop"


def count_tokens(text: str) -> int:
    """Tokens of a text, as the service's tokenizer for the upstream models counts them."""
    return litellm.token_counter(model=TOKENIZER_MODEL, text=text)


def marker_of(text: str) -> str | None:
    found = MARKER.search(text)
    return found.group(1) if found else None


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def plan_of(body: dict[str, Any], text: str) -> Plan:
    options = {name: int(value) for name, value in OPTION.findall(text)}
    prompt = litellm.token_counter(model=TOKENIZER_MODEL, messages=body["messages"], tools=body.get("tools"))
    cap = body.get("max_tokens") or body.get("max_completion_tokens")
    return Plan(body["model"], options.get("chunks", 8), options.get("tools", 0) == 1,
                options.get("pause", 0) / 1000, prompt, int(cap) if cap else None)


def _chunk(plan: Plan, delta: dict[str, Any], finish: str | None = None) -> str:
    data = {"id": "chatcmpl-cons", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": plan.model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(data)}\n\n"


def _deltas(plan: Plan) -> list[dict[str, Any]]:
    if not plan.tools:
        return [{"content": piece} for piece in plan.pieces()]
    call = {"index": 0, "id": "call_cons", "type": "function", "function": {"name": "lookup", "arguments": ""}}
    return [{"tool_calls": [call]}] + [{"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
                                       for piece in plan.pieces()]


async def _stream(plan: Plan, ledger: Ledger, marker: str | None, include_usage: bool) -> AsyncIterator[str]:
    for i, delta in enumerate(_deltas(plan)):
        if i == 0:
            delta = {"role": "assistant", **delta}
            ledger.produced(marker)
        yield _chunk(plan, delta)
        if plan.pause:
            await asyncio.sleep(plan.pause)
    yield _chunk(plan, {}, plan.finish_reason())
    if include_usage:
        usage = {"id": "chatcmpl-cons", "object": "chat.completion.chunk", "created": int(time.time()),
                 "model": plan.model, "choices": [], "usage": plan.usage()}
        yield f"data: {json.dumps(usage)}\n\n"
    yield "data: [DONE]\n\n"


def _completion(plan: Plan) -> dict[str, Any]:
    text = "".join(plan.pieces())
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if plan.tools:
        message = {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_cons", "type": "function", "function": {"name": "lookup", "arguments": text}}]}
    return {"id": "chatcmpl-cons", "object": "chat.completion", "created": int(time.time()), "model": plan.model,
            "choices": [{"index": 0, "message": message, "finish_reason": plan.finish_reason()}],
            "usage": plan.usage()}


def create_app(ledger: Ledger) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        text = last_user_text(body.get("messages") or [])
        marker = marker_of(text)
        ledger.called(marker)
        if body.get("model") == "up-fail":
            return JSONResponse({"error": {"message": "upstream exploded", "type": "server_error"}}, 500)
        plan = plan_of(body, text)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(_stream(plan, ledger, marker, include_usage), media_type="text/event-stream")
        ledger.produced(marker)
        return _completion(plan)

    @app.post("/v1/images/generations")
    async def images(request: Request) -> Any:
        body = await request.json()
        marker = marker_of(str(body.get("prompt", "")))
        ledger.called(marker)
        n = int(body.get("n") or 1)
        ledger.produced(marker)
        return {"created": int(time.time()), "data": [{"url": f"http://upstream.invalid/img/{i}.png"}
                                                      for i in range(n)]}

    add_media_routes(app, ledger)
    return app


def add_media_routes(app: FastAPI, ledger: Ledger) -> None:
    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Any:
        body = await request.json()
        given = body["input"]
        texts = [given] if isinstance(given, str) else [i for i in given if isinstance(i, str)]
        marker = marker_of(" ".join(texts))
        ledger.called(marker)
        if body.get("model") == "up-embed-fail":
            return JSONResponse({"error": {"message": "upstream exploded", "type": "server_error"}}, 500)
        ledger.produced(marker)
        tokens = sum(count_tokens(t) for t in texts)
        return {"object": "list", "model": body["model"], "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "data": [{"object": "embedding", "index": i, "embedding": [0.25, -0.5]} for i in range(len(texts))]}

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Any:
        form = await request.form()
        marker = marker_of(str(form.get("prompt") or ""))
        ledger.called(marker)
        upload = form["file"]
        with wave.open(io.BytesIO(await upload.read())) as reader:  # type: ignore[union-attr]
            seconds = reader.getnframes() / reader.getframerate()
        ledger.produced(marker)
        return {"text": "Credits are reserved first.", "usage": {"type": "duration", "seconds": math.ceil(seconds)}}

    @app.post("/v1/moderations")
    async def moderations(request: Request) -> Any:
        body = await request.json()
        marker = marker_of(str(body.get("input")))
        ledger.called(marker)
        ledger.produced(marker)
        return {"id": "modr-cons", "model": body.get("model"), "results": [
            {"flagged": False, "categories": {"hate": False}, "category_scores": {"hate": 0.01}}]}


class ConservationUpstream(ServedApp):
    """The upstream served on a local port, in a background thread."""

    def __init__(self, port: int):
        self.ledger = Ledger()
        super().__init__(create_app(self.ledger), port)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"
