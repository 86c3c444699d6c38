"""The authority's rate limits as REST shows them (README, "Rate limits"): OpenAI's x-ratelimit-* headers
on every response a limit applied to, and the 429 a RATE_LIMITED refusal becomes.

The authority decides (atomically with Reserve); this module only translates. A refusal is never a 402:
RESOURCE_EXHAUSTED with ErrorInfo reason RATE_LIMITED is 429 `rate_limit_exceeded`, with `Retry-After`
(whole seconds, rounded up) and `retry-after-ms` from its RetryInfo, which the `openai` SDKs honour. A
request that alone is larger than the limit (`exceeds`) gets no retry delay and `x-should-retry: false`:
waiting would not help.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from credit.v1 import authority_pb2
from credit_service.money import format_credits

from . import errors

Headers = dict[str, str]

RATE_LIMITED = "RATE_LIMITED"  # google.rpc.ErrorInfo reason
MINUTE_MS = 60_000
WHAT = {"requests_per_minute": "requests per minute", "tokens_per_minute": "tokens per minute",
        "max_parallel": "requests in flight at once", "credits_per_day": "credits per UTC day",
        "credits_per_month": "credits per UTC month"}
KIND = {"requests_per_minute": "requests", "tokens_per_minute": "tokens"}  # the per-minute ones OpenAI names


def duration(ms: int) -> str:
    """Milliseconds in OpenAI's (Go's) duration format: "250ms", "6s", "1.5s", "1m0s", "1h2m3s"."""
    ms = max(int(ms), 0)
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, MINUTE_MS)
    whole, frac = divmod(rest, 1000)
    seconds = f"{whole}.{frac:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{seconds}"
    return f"{minutes}m{seconds}" if minutes else seconds


def window_headers(kind: str, limit: int, remaining: int, reset_ms: int) -> Headers:
    return {f"x-ratelimit-limit-{kind}": str(limit), f"x-ratelimit-remaining-{kind}": str(max(remaining, 0)),
            f"x-ratelimit-reset-{kind}": duration(reset_ms)}


def ratelimit_headers(status: authority_pb2.RateLimitStatus) -> Headers:
    """The headers of a granted Reserve's per-minute limits (none when no limit applied)."""
    headers: Headers = {}
    for kind in ("requests", "tokens"):
        if status.HasField(kind):
            window = getattr(status, kind)
            headers.update(window_headers(kind, window.limit, window.remaining, window.reset_ms))
    return headers


def refused_window(limit_name: str, value: int, retry_ms: int, cost: int) -> Headers:
    """The x-ratelimit headers of the per-minute limit that refused a request costing `cost` (1 request, or
    its estimated tokens). GCRA: a refusal waits `retry_ms` for the `cost` to fit, so the limit is whole
    again after retry_ms + (value - cost) intervals of 60 s / value, and what is left now is below `cost`."""
    kind = KIND[limit_name]
    interval = MINUTE_MS / value
    reset = retry_ms + math.ceil((value - cost) * interval)
    remaining = max(cost - math.ceil(retry_ms / interval), 0)
    return window_headers(kind, value, remaining, reset)


def describe(limit_name: str, value: int) -> str:
    shown = format_credits(value) if limit_name.startswith("credits_") else str(value)
    return f"{shown} {WHAT.get(limit_name, limit_name)}"


def rate_limited(meta: Mapping[str, str], retry_ms: int | None, tokens: int = 0) -> errors.ApiError:
    """429 for a RATE_LIMITED refusal: nothing was held, no model was called."""
    limit_name, scope, window = meta.get("limit", ""), meta.get("scope", ""), meta.get("window", "")
    value = int(meta.get("value") or 0)
    named = f"limit {limit_name} ({describe(limit_name, value)}), scope {scope}, window {window}"
    extra = {"limit": limit_name, "scope": scope, "window": window, "value": value}
    if retry_ms is None:  # the request alone is larger than the limit
        headers = {"x-should-retry": "false"}
        if limit_name in KIND:
            headers[f"x-ratelimit-limit-{KIND[limit_name]}"] = str(value)
        return errors.ApiError(
            429, f"Rate limit exceeded by this request alone: {named}. Waiting will not help: send a smaller "
                 "request (a lower max_tokens) or ask an admin to raise the limit.",
            "rate_limit_error", "rate_limit_exceeded", headers=headers, extra=extra)
    headers = {"Retry-After": str(max(math.ceil(retry_ms / 1000), 1)), "retry-after-ms": str(retry_ms)}
    if limit_name in KIND and value > 0:
        cost = 1 if limit_name == "requests_per_minute" else max(min(tokens, value), 1)
        headers.update(refused_window(limit_name, value, retry_ms, cost))
    return errors.ApiError(429, f"Rate limit reached: {named}. Nothing was charged and no model was called; "
                                f"retry after {retry_ms} ms.",
                           "rate_limit_error", "rate_limit_exceeded", headers=headers,
                           extra={**extra, "retry_after_ms": retry_ms})
