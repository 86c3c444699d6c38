"""A local OpenAI-compatible upstream that LiteLLM calls over real HTTP.

Models: up-chat (normal), up-fail (HTTP 500), up-slow (a long, slow stream),
up-delay (answers after a pause), up-image (images), up-count (counts the
prompt it was sent as a provider would: every message and tool, by tiktoken),
up-tools (answers with a tool call, streamed as argument deltas, slowly); embeddings (up-embed,
up-embed-fail: HTTP 500, up-embed-cut: the connection cut mid-answer, up-embed-nousage: no `usage`),
transcriptions (up-transcribe, up-transcribe-fail) and moderations (up-moderate, up-moderate-fail) in
OpenAI's wire format; their *-delay models answer after MEDIA_DELAY_SECONDS; up-transcribe-long reports
ten times the seconds it was sent.
Like a real provider, it never writes more than the `max_tokens` it was sent.
Counts every request, keeps every request body, and serves /slow-image.png
(counting fetches) for tests that check nobody fetches images while estimating.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
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

    add_media_routes(app, calls)
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


def embedding_tokens(body: dict) -> int:
    """What this upstream bills an embeddings input: token arrays as they are; text by tiktoken plus a
    tenth (at least one), as a provider whose tokenizer counts a little more than ours would."""
    import litellm

    given = body["input"]
    items = [given] if isinstance(given, str) or (given and isinstance(given[0], int)) else given
    text = sum(len(litellm.encoding.encode(i)) for i in items if isinstance(i, str))
    arrays = sum(len(i) if isinstance(i, list) else 1 for i in items if not isinstance(i, str))
    return text + (max(1, text // 10) if text else 0) + arrays


def wav_seconds(data: bytes) -> float:
    import io
    import wave

    with wave.open(io.BytesIO(data)) as reader:
        return reader.getnframes() / reader.getframerate()


MEDIA_DELAY_SECONDS = 0.6


def add_media_routes(app: FastAPI, calls: Counter) -> None:
    """/v1/embeddings, /v1/audio/transcriptions and /v1/moderations, answered as OpenAI does."""

    async def maybe_wait(model: str) -> None:
        if model.endswith("-delay"):
            await asyncio.sleep(MEDIA_DELAY_SECONDS)

    def failed() -> JSONResponse:
        return JSONResponse({"error": {"message": "upstream exploded", "type": "server_error"}}, status_code=500)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        body = await request.json()
        model = body["model"]
        calls[model] += 1
        app.state.bodies.append(body)
        if model == "up-embed-fail":
            return failed()
        await maybe_wait(model)
        given = body["input"]
        count = 1 if isinstance(given, str) or isinstance(given[0], int) else len(given)
        answer = {"object": "list", "model": model, "data": [
            {"object": "embedding", "index": i, "embedding": [0.5, -0.25, 0.125]} for i in range(count)],
            "usage": {"prompt_tokens": embedding_tokens(body), "total_tokens": embedding_tokens(body)}}
        if model == "up-embed-nousage":  # a provider that leaves `usage` out of its answer
            del answer["usage"]
        if model == "up-embed-cut":  # promises the whole answer, sends half of it, then drops the connection
            data = json.dumps(answer).encode()

            async def half():
                yield data[:len(data) // 2]
                raise ConnectionResetError("upstream cut the connection")

            return StreamingResponse(half(), media_type="application/json",
                                     headers={"Content-Length": str(len(data))})
        return answer

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request):
        form = await request.form()
        model = str(form["model"])
        calls[model] += 1
        upload = form["file"]
        data = await upload.read()
        app.state.bodies.append({"model": model, "file_bytes": len(data), "filename": upload.filename,
                                 **{k: v for k, v in form.items() if isinstance(v, str)}})
        if model == "up-transcribe-fail":
            return failed()
        await maybe_wait(model)
        seconds = wav_seconds(data)
        text = "Credits are reserved before every call."
        response_format = form.get("response_format") or "json"
        if response_format in ("text", "srt", "vtt"):
            return PlainTextResponse(text)
        usage = {"type": "duration", "seconds": math.ceil(seconds) * (10 if model == "up-transcribe-long" else 1)}
        if response_format == "verbose_json":
            return {"task": "transcribe", "language": "english", "duration": seconds, "text": text,
                    "segments": [], "usage": usage}
        return {"text": text, "usage": usage}

    @app.post("/v1/moderations")
    async def moderations(request: Request):
        body = await request.json()
        model = body.get("model", "")
        calls[model] += 1
        app.state.bodies.append(body)
        if model == "up-moderate-fail":
            return failed()
        await maybe_wait(model)
        given = body["input"]
        count = len(given) if isinstance(given, list) and given and isinstance(given[0], str) else 1
        flagged = [isinstance(given, str) and "hate" in given or isinstance(given, list) and "hate" in str(given[i])
                   for i in range(count)]
        return {"id": "modr-up", "model": model, "results": [
            {"flagged": f, "categories": {"hate": f, "violence": False},
             "category_scores": {"hate": 0.9 if f else 0.01, "violence": 0.02}} for f in flagged]}


class Upstream(ServedApp):
    """The upstream served on a local port, in a background thread."""

    def __init__(self, port: int):
        app, self.calls = create_upstream()
        super().__init__(app, port)
        self.app = app

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"
