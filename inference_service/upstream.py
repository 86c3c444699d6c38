"""The model provider's side of a billed call, in the service's terms: the usage it reported,
its errors as API errors (and as the last event of a stream), and server-sent events."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from . import errors, metrics

T = TypeVar("T")


def reported_tokens(usage: Any) -> tuple[int, int]:
    """(prompt, completion) tokens from a provider's usage; ValueError when it has none."""
    if not isinstance(usage, dict):
        raise ValueError("the provider reported no usage")
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


async def answer(model: str, request: Awaitable[T],
                 failed: Callable[[Exception], Awaitable[errors.ApiError]]) -> tuple[T, int]:
    """The provider's answer to `request` (a LiteLLM call) and its latency in ms, observed in
    UPSTREAM_LATENCY; when the call fails, the error `failed(exc)` gives is raised (Meter.void: the hold
    released, nothing charged). Every non-streamed billed call goes through here."""
    started = time.monotonic()
    try:
        response = await request
    except Exception as exc:  # the provider failed: nothing to charge
        raise await failed(exc) from None
    finally:
        metrics.UPSTREAM_LATENCY.labels(model).observe(time.monotonic() - started)
    return response, int((time.monotonic() - started) * 1000)


class HoldDeadline(Exception):
    """A stream ran up to its hold's deadline."""


async def close_quietly(upstream: Any) -> None:
    close: Callable[[], Coroutine[Any, Any, Any]] | None = getattr(upstream, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:
            pass


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def stream_error(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, HoldDeadline):
        return {"error": {"message": str(exc), "type": "billing_error", "code": "hold_deadline"}}
    return {"error": {"message": upstream_message(exc, released=False), "type": "upstream_error",
                      "code": "upstream_failed"}}


def upstream_error(exc: Exception) -> errors.ApiError:
    """A provider's 4xx about the request (unsupported parameter, context too long) is the
    client's error: 400. Anything else is the provider failing: 502. Either way the hold is gone."""
    status = getattr(exc, "status_code", None)
    if status in (400, 404, 413, 422):
        detail = str(getattr(exc, "message", "") or exc).replace("\n", " ")[:300]
        return errors.ApiError(400, f"The model provider rejected the request: {detail}",
                               "invalid_request_error", "provider_rejected_request")
    return errors.upstream_failed(upstream_message(exc, released=True))


def upstream_message(exc: Exception, released: bool) -> str:
    status = getattr(exc, "status_code", None)
    suffix = f" (status {status})" if status else ""
    outcome = ("The credit hold was released." if released
               else "What was generated before the failure is charged.")
    return f"The model provider failed{suffix}: {type(exc).__name__}. {outcome}"
