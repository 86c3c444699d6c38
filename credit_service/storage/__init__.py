"""PostgreSQL storage of the credit authority: every SQL statement outside migrations/ lives here.

`Storage` is the one object the authority holds. It is the sum of nine parts, each a module:

* hot_path.py  Check, Reserve, Commit, Release, expiry: one round trip each to the functions of
               migrations/functions/, alone or group-committed by batcher.py (one answer shape)
* admin.py     users, organizations, members, top-ups, allocations, grants, API keys
* usage.py     usage analytics over the attribution rows
* alerts.py    low-balance alert webhooks, thresholds, events and their delivery state
* payments.py  purchases through Stripe Checkout: pending, paid (the pool topped up once), expired, refunded
* reports.py   statements and forecasts, read from the ledger
* rate_limits.py  setting and listing rate limits (Reserve enforces them in SQL)
* platforms.py  platform credentials: created, listed, rotated, revoked; a secret's digest looked up
* audit.py     the audit log: each administrative action's record, appended in the transaction of its
               change (`Queries.writing`), and read back

Two pools (common.py, `Queries`): the hot path's and every write's, and the slow reads' own (usage
analytics, statements, forecasts, purchase and alert-event lists), with a statement timeout, on
DATABASE_READ_URL when set.

All statements are parameterized; the domain's types come from credit_service.model.
"""

from __future__ import annotations

import asyncpg

from .admin import AdminQueries
from .alerts import AlertQueries
from .audit import AuditQueries
from .batcher import HotPathBatcher
from .common import init_connection, keep_session
from .hot_path import BATCH_SQL, HotOp, HotPathQueries, run_batch
from .payments import PaymentQueries
from .platforms import PlatformQueries
from .rate_limits import RateLimitQueries
from .reports import ReportQueries
from .usage import UsageQueries

__all__ = ["BATCH_SQL", "HotOp", "HotPathBatcher", "Storage", "init_connection"]


# Seconds the read pool's server is behind its primary: 0 on a primary, or on a standby that has
# replayed everything it received (an idle primary sends nothing, so the last replay's age is not lag).
REPLICA_LAG_SQL = """
    SELECT CASE WHEN NOT pg_is_in_recovery() THEN 0
                WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0
                ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0) END::float8"""


class Storage(HotPathQueries, AdminQueries, UsageQueries, AlertQueries, PaymentQueries, ReportQueries,
              RateLimitQueries, PlatformQueries, AuditQueries):
    """The authority's only door to PostgreSQL."""

    @classmethod
    async def connect(cls, database_url: str, min_size: int = 2, max_size: int = 10, *,
                      batch_max: int = 256, batch_in_flight: int = 1, read_url: str = "",
                      read_max_size: int = 0, read_timeout_seconds: float = 0) -> Storage:
        """A pool to the database and, when batch_max > 1, the hot path's group commit over it; when
        read_max_size > 0, the slow reads' own pool (on read_url, else the same database), each of its
        connections with statement_timeout = read_timeout_seconds (0: none)."""
        pool = await asyncpg.create_pool(
            database_url, min_size=min_size, max_size=max_size, init=init_connection, reset=keep_session,
            command_timeout=30, max_inactive_connection_lifetime=60,
        )
        batcher: HotPathBatcher[HotOp] | None = None
        if batch_max > 1:
            batcher = HotPathBatcher(lambda operations: run_batch(pool, operations), batch_max,
                                     min(batch_in_flight, max_size))
        read_pool = None
        if read_max_size > 0:
            read_pool = await create_read_pool(read_url or database_url, read_max_size, read_timeout_seconds)
        return cls(pool, batcher, read_pool, read_timeout_seconds)

    async def close(self) -> None:
        if self.read_pool is not self.pool:
            await self.read_pool.close()
        await self.pool.close()

    async def ping(self) -> None:
        await self.pool.fetchval("SELECT 1")

    def pool_stats(self) -> tuple[int, int]:
        """(connections open, connections idle)."""
        return self.pool.get_size(), self.pool.get_idle_size()

    def read_pool_stats(self) -> tuple[int, int]:
        """(connections open, connections idle) of the slow reads' pool."""
        return self.read_pool.get_size(), self.read_pool.get_idle_size()

    async def read_replica_lag(self) -> float:
        """Seconds the read pool's server is behind its primary (0 on a primary)."""
        lag: float = await self.read_pool.fetchval(REPLICA_LAG_SQL)
        return lag


async def create_read_pool(url: str, max_size: int, timeout_seconds: float) -> asyncpg.Pool:
    """The slow reads' pool: the statement timeout is a connection setting, so it bounds every statement
    on these connections and none on the hot path's."""
    settings = {"statement_timeout": str(round(timeout_seconds * 1000))}
    # The client gives up a little after the server would have (a server that no longer answers).
    command_timeout = timeout_seconds + 5 if timeout_seconds > 0 else None
    return await asyncpg.create_pool(
        url, min_size=1, max_size=max_size, init=init_connection, reset=keep_session,
        command_timeout=command_timeout, max_inactive_connection_lifetime=60, server_settings=settings,
    )
