"""PostgreSQL storage of the credit authority: every SQL statement outside migrations/ lives here.

`Storage` is the one object the authority holds. It is the sum of eight parts, each a module:

* hot_path.py  Check, Reserve, Commit, Release, expiry: one round trip each to the functions of
               migrations/functions/, alone or group-committed by batcher.py (one answer shape)
* admin.py     users, organizations, members, top-ups, allocations, grants, API keys
* usage.py     usage analytics over the attribution rows
* alerts.py    low-balance alert webhooks, thresholds, events and their delivery state
* payments.py  purchases through Stripe Checkout: pending, paid (the pool topped up once), expired, refunded
* reports.py   statements and forecasts, read from the ledger
* rate_limits.py  setting and listing rate limits (Reserve enforces them in SQL)
* platforms.py  platform credentials: created, listed, rotated, revoked; a secret's digest looked up

All statements are parameterized; the domain's types come from credit_service.model.
"""

from __future__ import annotations

import asyncpg

from .admin import AdminQueries
from .alerts import AlertQueries
from .batcher import HotPathBatcher
from .common import init_connection, keep_session
from .hot_path import BATCH_SQL, HotOp, HotPathQueries, run_batch
from .payments import PaymentQueries
from .platforms import PlatformQueries
from .rate_limits import RateLimitQueries
from .reports import ReportQueries
from .usage import UsageQueries

__all__ = ["BATCH_SQL", "HotOp", "HotPathBatcher", "Storage", "init_connection"]


class Storage(HotPathQueries, AdminQueries, UsageQueries, AlertQueries, PaymentQueries, ReportQueries,
              RateLimitQueries, PlatformQueries):
    """The authority's only door to PostgreSQL."""

    @classmethod
    async def connect(cls, database_url: str, min_size: int = 2, max_size: int = 10, *,
                      batch_max: int = 256, batch_in_flight: int = 1) -> Storage:
        """A pool to the database and, when batch_max > 1, the hot path's group commit over it."""
        pool = await asyncpg.create_pool(
            database_url, min_size=min_size, max_size=max_size, init=init_connection, reset=keep_session,
            command_timeout=30, max_inactive_connection_lifetime=60,
        )
        batcher: HotPathBatcher[HotOp] | None = None
        if batch_max > 1:
            batcher = HotPathBatcher(lambda operations: run_batch(pool, operations), batch_max,
                                     min(batch_in_flight, max_size))
        return cls(pool, batcher)

    async def close(self) -> None:
        await self.pool.close()

    async def ping(self) -> None:
        await self.pool.fetchval("SELECT 1")

    def pool_stats(self) -> tuple[int, int]:
        """(connections open, connections idle)."""
        return self.pool.get_size(), self.pool.get_idle_size()
