"""Local HTTP servers that answer in each real provider's own wire format, for
LiteLLM to call over the network with a catalogue entry's api_base pointed at them.

* OpenAI (`/v1/chat/completions`, `/v1/images/generations`): chat completions,
  streamed as SSE chunks with a final usage chunk when
  `stream_options.include_usage` is set; dall-e-3 images (one per request, as
  the real API allows); embeddings (`/v1/embeddings`, usage.prompt_tokens
  OPENAI_USAGE.prompt whatever the input), transcriptions
  (`/v1/audio/transcriptions`, multipart; usage in whole seconds of the WAV
  sent) and moderations (`/v1/moderations`).
* Anthropic Messages API (`/v1/messages`): `usage.input_tokens` /
  `usage.output_tokens`; streamed as Anthropic's named events, where the input
  tokens arrive in `message_start` (next to a provisional `output_tokens: 1`)
  and the final, cumulative output tokens in `message_delta`.
* OpenRouter (`/api/v1/chat/completions`): OpenAI-shaped answers under
  OpenRouter's own base path, with its `: OPENROUTER PROCESSING` SSE comments,
  `provider` field and a `usage.cost` of its own.

Each provider reports its own distinctive token counts (`USAGE`), so a charge
priced from the wrong provider, the wrong field or a swapped price shows. Every
request is recorded (`Seen`), unknown paths too (answered 404), so tests can
check what LiteLLM sent.
"""

from __future__ import annotations

import io
import json
import math
import threading
import time
import wave
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from helpers import ServedApp


@dataclass(frozen=True)
class Usage:
    """Tokens a provider reports for every answer."""

    prompt: int
    completion: int

    @property
    def total(self) -> int:
        return self.prompt + self.completion


# Distinct per provider, and far from anything a tokenizer would count for the
# short prompts the tests send: the charge must come from what the provider reported.
OPENAI_USAGE = Usage(prompt=1234, completion=567)
ANTHROPIC_USAGE = Usage(prompt=2345, completion=678)
OPENROUTER_USAGE = Usage(prompt=3456, completion=789)
# What Anthropic's message_start carries as output_tokens before any text: a
# parser that adds it to message_delta's cumulative count overcharges.
ANTHROPIC_PROVISIONAL_OUTPUT_TOKENS = 1

DALL_E_3_SIZES = ("1024x1024", "1792x1024", "1024x1792")

WORDS = ["Billed", "at", "the", "price", "the", "catalogue", "resolves."]
ANSWER = " ".join(WORDS)


@dataclass(frozen=True)
class Seen:
    """One request as a fake provider received it."""

    provider: str
    path: str
    model: str | None
    stream: bool
    include_usage: bool
    max_tokens: int | None  # max_tokens, else max_completion_tokens, as sent
    n: int | None
    auth: str  # which credential header came: "authorization", "x-api-key" or ""
    credential: str  # its value (the catalogue's dummy key)
    body: dict[str, Any]


class Recorder:
    """Requests received by the fake providers, in order (appended from the servers' threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: list[Seen] = []

    def record(self, provider: str, request: Request, body: dict[str, Any]) -> Seen:
        headers = request.headers
        auth = "x-api-key" if "x-api-key" in headers else "authorization" if "authorization" in headers else ""
        credential = headers.get(auth, "") if auth else ""
        cap = body.get("max_tokens", body.get("max_completion_tokens"))
        seen = Seen(provider=provider, path=request.url.path, model=body.get("model"),
                    stream=bool(body.get("stream")),
                    include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
                    max_tokens=int(cap) if cap is not None else None,
                    n=int(body["n"]) if body.get("n") is not None else None, auth=auth,
                    credential=credential, body=body)
        with self._lock:
            self._seen.append(seen)
        return seen

    def mark(self) -> int:
        with self._lock:
            return len(self._seen)

    def since(self, mark: int) -> list[Seen]:
        with self._lock:
            return list(self._seen[mark:])


def _sse(data: dict[str, Any], event: str | None = None) -> str:
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _add_catch_all(app: FastAPI, provider: str, recorder: Recorder) -> None:
    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE"])
    async def unknown(path: str, request: Request) -> JSONResponse:
        recorder.record(provider, request, await _body(request))
        return JSONResponse({"error": {"message": f"{provider} fake: no route /{path}", "type": "not_found"}},
                            status_code=404)


# ---- OpenAI-shaped chat (OpenAI itself, and OpenRouter under its own path) ----------


def _openai_chat_answer(body: dict[str, Any], usage: Usage, extra: dict[str, Any],
                        usage_extra: dict[str, Any], comments: bool) -> Any:
    model = body.get("model", "")
    created = int(time.time())
    base = {"id": "chatcmpl-fake", "created": created, "model": model, **extra}
    usage_body = {"prompt_tokens": usage.prompt, "completion_tokens": usage.completion,
                  "total_tokens": usage.total, **usage_extra}
    if not body.get("stream"):
        return {**base, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER},
                             "finish_reason": "stop", "logprobs": None}],
                "usage": usage_body}

    async def events() -> AsyncIterator[str]:
        if comments:
            yield ": OPENROUTER PROCESSING\n\n"
        chunk = {**base, "object": "chat.completion.chunk"}
        for i, word in enumerate(WORDS):
            delta: dict[str, Any] = {"content": word if i == 0 else " " + word}
            if i == 0:
                delta["role"] = "assistant"
            yield _sse({**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
        yield _sse({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            yield _sse({**chunk, "choices": [], "usage": usage_body})
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def create_openai_app(recorder: Recorder) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await _body(request)
        recorder.record("openai", request, body)
        return _openai_chat_answer(body, OPENAI_USAGE, {"system_fingerprint": "fp_fake"}, {
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}}, comments=False)

    @app.post("/v1/images/generations")
    async def images(request: Request) -> Any:
        body = await _body(request)
        recorder.record("openai", request, body)
        n = int(body.get("n") or 1)
        if body.get("model") == "dall-e-3":  # what the real API refuses for this model
            problem = ("n", "You must provide n=1 for this model.") if n != 1 else \
                ("size", "Invalid size for dall-e-3.") if body.get("size", "1024x1024") not in DALL_E_3_SIZES else \
                ("quality", "Invalid quality.") if body.get("quality", "standard") not in ("standard", "hd") else None
            if problem is not None:
                return JSONResponse({"error": {"message": problem[1], "type": "invalid_request_error",
                                               "param": problem[0], "code": None}}, status_code=400)
        return {"created": int(time.time()),
                "data": [{"url": f"https://images.invalid/fake-{i}.png", "revised_prompt": "A revised prompt."}
                         for i in range(n)]}

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Any:
        body = await _body(request)
        recorder.record("openai", request, body)
        given = body.get("input")
        count = len(given) if isinstance(given, list) and given and not isinstance(given[0], int) else 1
        return {"object": "list", "model": body.get("model"),
                "data": [{"object": "embedding", "index": i, "embedding": [0.125, -0.25, 0.5]} for i in range(count)],
                "usage": {"prompt_tokens": OPENAI_USAGE.prompt, "total_tokens": OPENAI_USAGE.prompt}}

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Any:
        form = await request.form()
        upload = form.get("file")
        data = b"" if upload is None or isinstance(upload, str) else await upload.read()
        recorder.record("openai", request, {**{k: v for k, v in form.items() if isinstance(v, str)},
                                            "file_bytes": len(data)})
        with wave.open(io.BytesIO(data)) as reader:
            seconds = reader.getnframes() / reader.getframerate()
        return {"text": ANSWER, "usage": {"type": "duration", "seconds": math.ceil(seconds)}}

    @app.post("/v1/moderations")
    async def moderations(request: Request) -> Any:
        body = await _body(request)
        recorder.record("openai", request, body)
        return {"id": "modr-fake", "model": body.get("model"), "results": [
            {"flagged": False, "categories": {"hate": False, "violence": False},
             "category_scores": {"hate": 0.001, "violence": 0.002}}]}

    _add_catch_all(app, "openai", recorder)
    return app


def create_openrouter_app(recorder: Recorder) -> FastAPI:
    app = FastAPI()

    @app.post("/api/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await _body(request)
        recorder.record("openrouter", request, body)
        # OpenRouter's own cost figure, deliberately not the catalogue's price:
        # billing follows the catalogue, not a number in the provider's body.
        return _openai_chat_answer(body, OPENROUTER_USAGE, {"provider": "DeepInfra"},
                                   {"cost": 0.5, "is_byok": False}, comments=True)

    _add_catch_all(app, "openrouter", recorder)
    return app


# ---- Anthropic Messages API --------------------------------------------------------


def create_anthropic_app(recorder: Recorder) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/messages")
    async def messages(request: Request) -> Any:
        body = await _body(request)
        recorder.record("anthropic", request, body)
        model = body.get("model", "")
        message_id = "msg_01FakeProviderUpstream"
        if not body.get("stream"):
            return {"id": message_id, "type": "message", "role": "assistant", "model": model,
                    "content": [{"type": "text", "text": ANSWER}], "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": {"input_tokens": ANTHROPIC_USAGE.prompt, "output_tokens": ANTHROPIC_USAGE.completion,
                              "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                              "service_tier": "standard"}}

        async def events() -> AsyncIterator[str]:
            yield _sse({"type": "message_start", "message": {
                "id": message_id, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": ANTHROPIC_USAGE.prompt, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 0,
                          "output_tokens": ANTHROPIC_PROVISIONAL_OUTPUT_TOKENS, "service_tier": "standard"}}},
                event="message_start")
            yield _sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                       event="content_block_start")
            yield _sse({"type": "ping"}, event="ping")
            for i, word in enumerate(WORDS):
                yield _sse({"type": "content_block_delta", "index": 0,
                            "delta": {"type": "text_delta", "text": word if i == 0 else " " + word}},
                           event="content_block_delta")
            yield _sse({"type": "content_block_stop", "index": 0}, event="content_block_stop")
            yield _sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                        "usage": {"output_tokens": ANTHROPIC_USAGE.completion}}, event="message_delta")
            yield _sse({"type": "message_stop"}, event="message_stop")

        return StreamingResponse(events(), media_type="text/event-stream")

    _add_catch_all(app, "anthropic", recorder)
    return app


# ---- serving -----------------------------------------------------------------------


class FakeProvider(ServedApp):
    """One fake provider served on a local port, in a background thread."""



class ProviderUpstreams:
    """The three fake providers, and the api_base each catalogue entry points at
    (the same form as the real one: OpenAI's and OpenRouter's include the version
    path; Anthropic's is the bare host, to which LiteLLM adds /v1/messages)."""

    def __init__(self, free_port: Callable[[], int]):
        self.recorder = Recorder()
        self.openai = FakeProvider(create_openai_app(self.recorder), free_port())
        self.anthropic = FakeProvider(create_anthropic_app(self.recorder), free_port())
        self.openrouter = FakeProvider(create_openrouter_app(self.recorder), free_port())

    @property
    def api_bases(self) -> dict[str, str]:
        """api_base per LiteLLM provider prefix (the part of litellm_params.model before '/')."""
        return {"openai": f"{self.openai.url}/v1", "anthropic": self.anthropic.url,
                "openrouter": f"{self.openrouter.url}/api/v1"}

    def start(self) -> ProviderUpstreams:
        for server in (self.openai, self.anthropic, self.openrouter):
            server.start()
        return self

    def stop(self) -> None:
        for server in (self.openai, self.anthropic, self.openrouter):
            server.stop()
