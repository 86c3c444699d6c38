"""Offline answers for demo transcription and moderation models (`make run` without network).

LiteLLM's `mock_response` covers chat, images and embeddings only. For transcriptions and moderations
LiteLLM takes the OpenAI client to call through (`client=`); a demo entry (one with `mock_response` in
its litellm_params) gets a client whose transport answers here, in OpenAI's wire format, so LiteLLM's
whole request and response path runs with no network. The transcription's text is the entry's
`mock_response`, with no usage (it is charged the file's own duration); a moderation flags nothing.
"""

from __future__ import annotations

import importlib
import json
from functools import lru_cache
from typing import Any

import openai

# The HTTP library the installed openai SDK is built on (httpx, or its fork httpx2 in openai 3): its
# MockTransport and Response are the same API in both.
_http: Any = importlib.import_module(openai.DefaultAsyncHttpxClient.__mro__[1].__module__.split(".")[0])

OFFLINE_BASE = "http://offline.invalid/v1"  # never resolved: the transport answers every request itself
CATEGORIES = ("harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
              "self-harm", "self-harm/instructions", "self-harm/intent", "sexual", "sexual/minors", "violence",
              "violence/graphic")


def _moderation(body: dict[str, Any]) -> dict[str, Any]:
    given = body.get("input")
    count = len(given) if isinstance(given, list) and given and isinstance(given[0], str) else 1
    result = {"flagged": False, "categories": dict.fromkeys(CATEGORIES, False),
              "category_scores": dict.fromkeys(CATEGORIES, 0.0)}
    return {"id": "modr-offline", "model": body.get("model"), "results": [result] * count}


@lru_cache(maxsize=64)
def offline_client(answer: str, response_format: str = "json") -> openai.AsyncOpenAI:
    """An OpenAI client that never leaves the process: transcriptions answer `answer`, moderations flag nothing."""

    def handle(request: Any) -> Any:
        if request.url.path.endswith("/audio/transcriptions"):
            if response_format in ("text", "srt", "vtt"):
                return _http.Response(200, text=answer, headers={"content-type": "text/plain"})
            return _http.Response(200, json={"text": answer})
        if request.url.path.endswith("/moderations"):
            return _http.Response(200, json=_moderation(json.loads(request.content or b"{}")))
        return _http.Response(404, json={"error": {"message": f"no offline answer for {request.url.path}",
                                                   "type": "invalid_request_error"}})

    return openai.AsyncOpenAI(api_key="demo-offline", base_url=OFFLINE_BASE, max_retries=0,
                              http_client=openai.DefaultAsyncHttpxClient(transport=_http.MockTransport(handle)))


def offline_params(params: dict[str, Any], response_format: str = "json") -> dict[str, Any]:
    """LiteLLM's params for a call: a demo entry's `mock_response` becomes the offline client."""
    if "mock_response" not in params:
        return params
    rest = {k: v for k, v in params.items() if k != "mock_response"}
    return {**rest, "client": offline_client(str(params["mock_response"]), response_format)}
