"""A local OpenAI-compatible upstream that LiteLLM calls over real HTTP.

Models: up-chat (normal), up-fail (HTTP 500), up-slow (a long, slow stream),
up-delay (answers after a pause), up-image (images). Counts every request.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

PROMPT_TOKENS = 12
WORDS = ["Credits", "are", "reserved", "before", "and", "committed", "after", "every", "call."]


def create_upstream() -> tuple[FastAPI, Counter]:
    app = FastAPI()
    calls: Counter = Counter()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        model = body["model"]
        calls[model] += 1
        if model == "up-fail":
            return JSONResponse({"error": {"message": "upstream exploded", "type": "server_error"}}, status_code=500)
        if model == "up-delay":
            await asyncio.sleep(float(request.headers.get("x-test-delay", "2")))
        words = WORDS * (60 if model == "up-slow" else 1)
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
                    usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": len(words),
                             "total_tokens": PROMPT_TOKENS + len(words)}
                    yield "data: " + json.dumps({"id": "chatcmpl-up", "object": "chat.completion.chunk",
                                                 "created": created, "model": model, "choices": [],
                                                 "usage": usage}) + "\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        return {"id": "chatcmpl-up", "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words)},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": len(words),
                          "total_tokens": PROMPT_TOKENS + len(words)}}

    @app.post("/v1/images/generations")
    async def images(request: Request):
        body = await request.json()
        calls[body.get("model", "")] += 1
        n = int(body.get("n") or 1)
        return {"created": int(time.time()), "data": [{"url": f"http://upstream.invalid/img/{i}.png"}
                                                      for i in range(n)]}

    return app, calls


class Upstream:
    """The upstream served by uvicorn on a local port, in a background thread."""

    def __init__(self, port: int):
        self.port = port
        self.app, self.calls = create_upstream()
        self._server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> Upstream:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("upstream did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
