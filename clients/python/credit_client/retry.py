"""The one retry policy of calls to the authority: which codes are retried, how often, and how long to wait.

UNAVAILABLE and DEADLINE_EXCEEDED (:data:`RETRYABLE`) are retried with the *same*
request: Reserve is idempotent per ``request_id``, Commit and Release per
reservation, the reads have no effect. Any other status is the authority's answer
and is raised at once.

:class:`CreditClient <credit_client.CreditClient>` uses the default policy (5
attempts, exponential backoff with full jitter from 0.1 s, at most 2 s; its
``attempts``, ``initial_backoff`` and ``max_backoff`` arguments set it); the
inference service (inference_service/authority_client.py) uses a fixed
sequence of waits, without jitter.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

log = logging.getLogger("credit_client")

_T = TypeVar("_T")


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries of a call (1 = no retry). Before try *n+1* it waits up to ``backoffs()[n]``
    seconds: ``initial_backoff``, then each wait ``multiplier`` times the previous one, at most
    ``max_backoff``. With ``jitter`` (full jitter) the wait is drawn uniformly from ``[0, backoff]``;
    without it the wait is the backoff itself."""

    attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoffs must be >= 0")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")

    def backoffs(self) -> tuple[float, ...]:
        """The bound of each wait, in seconds: ``attempts - 1`` values (one between two tries)."""
        bounds: list[float] = []
        backoff = self.initial_backoff
        for _ in range(self.attempts - 1):
            bounds.append(backoff)
            backoff = min(backoff * self.multiplier, self.max_backoff)
        return tuple(bounds)

    def delays(self) -> tuple[float, ...]:
        """The waits of one call, in seconds (drawn anew on each call when ``jitter``)."""
        return tuple(random.uniform(0, bound) if self.jitter else bound for bound in self.backoffs())

    async def call(self, method: Callable[..., Awaitable[_T]], request: Any, *,
                   metadata: Sequence[tuple[str, str]] | None = None, timeout: float | None = None,
                   sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> tuple[_T, int]:
        """``await method(request, metadata=..., timeout=...)``, retrying :data:`RETRYABLE` codes with the
        same request. Returns ``(response, attempt)`` where ``attempt`` counts from 0 (0: the first try
        was answered). Raises the ``grpc.aio.AioRpcError`` at once when its code is not retryable, and
        the last one when the attempts are spent."""
        delays = self.delays()
        for attempt in range(self.attempts):
            try:
                return await method(request, metadata=metadata, timeout=timeout), attempt
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRYABLE or attempt == len(delays):
                    raise
                log.info("authority answered %s (attempt %d of %d); retrying", error.code().name, attempt + 1,
                         self.attempts)
            await sleep(delays[attempt])
        raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover
