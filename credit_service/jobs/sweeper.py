"""The expiry sweeper: releases expired holds every interval, refreshes the hold and pool gauges, and
reports whether the database answered (serve() turns that into the gRPC health status)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from .. import metrics
from ..authority import CreditAuthority
from ..storage import Storage

log = logging.getLogger("credit_service")


class Sweeper:
    """Releases expired holds every interval; reports database health through `report_health(serving)`.

    `database_down` is the tuple of exceptions that mean PostgreSQL cannot be reached (the gRPC layer's
    DATABASE_DOWN): a pass that raises one of them reports not serving; any other failure is logged."""

    def __init__(self, authority: CreditAuthority, storage: Storage,
                 report_health: Callable[[bool], Awaitable[None]], interval: float, batch: int,
                 database_down: tuple[type[BaseException], ...]):
        self._authority = authority
        self._storage = storage
        self._report_health = report_health
        self._interval = interval
        self._batch = batch
        self._database_down = database_down
        self.expired_total = 0

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
                await self._report_health(True)
            except self._database_down:
                await self._report_health(False)
            except Exception:  # keep sweeping whatever one pass hit
                log.exception("sweeper pass failed")
            await asyncio.sleep(self._interval)

    async def run_once(self) -> None:
        """One pass: expire in batches until a batch comes back short, then refresh the gauges."""
        while (count := await self._authority.expire_holds(self._batch)) > 0:
            self.expired_total += count
            metrics.EXPIRED.inc(count)
            log.info("sweeper released %d expired holds", count)
            if count < self._batch:
                break
        metrics.SWEEPS.inc()
        holds, held = await self._storage.outstanding_holds()
        metrics.HOLDS_OUTSTANDING.set(holds)
        metrics.HELD_OUTSTANDING.set(held)
        size, idle = self._storage.pool_stats()
        metrics.DB_POOL_SIZE.set(size)
        metrics.DB_POOL_IDLE.set(idle)
