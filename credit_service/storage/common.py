"""What every part of storage shares: the connection setup, the base class holding the pools,
the existence checks administration runs inside its transactions, and the mapping of SQL
outcomes to domain errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from .. import audit
from ..errors import ACCOUNT_TOTAL_LIMIT, FailedPrecondition, NotFound, PermissionDenied, ReadTimeout
from ..model import MAX_ACCOUNT_TOTAL_MC


async def init_connection(conn: asyncpg.Connection) -> None:
    """Every connection of the authority: JSONB in and out as Python values."""
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset: nothing to undo. The authority never changes session state (no SET,
    LISTEN, advisory lock or cursor outside a transaction; asyncpg itself still rolls
    back a transaction left open), so the default reset query, one more round trip
    after every call, is skipped."""


def raise_resolution(outcome: str, user_id: str, org_id: str) -> None:
    """Raises the error of a funding-resolution outcome (credit_resolve_funding); other outcomes pass."""
    if outcome == "unknown_user":
        raise NotFound(f"user {user_id!r} not found")
    if outcome == "unknown_org":
        raise NotFound(f"organization {org_id!r} not found")
    if outcome == "not_member":
        raise PermissionDenied(f"user {user_id!r} is not a member of organization {org_id!r}")


def past_largest_total(what: str) -> FailedPrecondition:
    return FailedPrecondition(f"{what} would pass the largest account total ({MAX_ACCOUNT_TOTAL_MC} millicredits)",
                              ACCOUNT_TOTAL_LIMIT, {"limit": str(MAX_ACCOUNT_TOTAL_MC)})


class Queries:
    """Base of each part of storage: the pools, and the checks that run inside a transaction.

    `pool` is the hot path's and every write's. `read_pool` is for the reads that can be slow (usage
    analytics, statements, forecasts, purchase and alert-event lists): its own connections, each with a
    server-side statement_timeout of `read_timeout_seconds`, on DATABASE_READ_URL when set (a replica:
    slightly stale), so that no amount of analytics takes a connection Reserve and Commit need. Nothing
    that writes, and nothing on the money path, reads through it."""

    def __init__(self, pool: asyncpg.Pool, read_pool: asyncpg.Pool | None = None, read_timeout_seconds: float = 0):
        self.pool = pool
        self.read_pool = pool if read_pool is None else read_pool
        self.read_timeout_seconds = read_timeout_seconds

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection of the read pool; a statement its timeout cancelled raises ReadTimeout."""
        try:
            async with self.read_pool.acquire() as conn:
                yield conn
        except asyncpg.QueryCanceledError as error:
            raise ReadTimeout(self.read_timeout_seconds) from error

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[asyncpg.Connection]:
        """A write transaction on the main pool. Inside an audited RPC (audit.current set) the action's audit
        record is appended in it too (storage/audit.py): `before` read as it starts, `after` and the record
        written just before it commits, so the change and its record commit together or not at all. The
        first write transaction of an action carries its record."""
        from .audit import open_entry, seal_entry  # audit.py builds on this module

        async with self.pool.acquire() as conn, conn.transaction():
            entry = audit.current.get()
            if entry is None or entry.written:
                yield conn
            else:
                await open_entry(conn, entry)
                yield conn
                await seal_entry(conn, entry)

    @staticmethod
    async def require_org(conn: asyncpg.Connection, org_id: str, lock: bool = False) -> asyncpg.Record:
        """The org's pool row (locked FOR UPDATE when asked); NotFound for an unknown org."""
        sql = "SELECT * FROM org_pools WHERE org_id = $1"
        row = await conn.fetchrow(sql + (" FOR UPDATE" if lock else ""), org_id)
        if row is None:
            raise NotFound(f"organization {org_id!r} not found")
        return row

    @staticmethod
    async def require_user(conn: asyncpg.Connection, user_id: str) -> None:
        if await conn.fetchval("SELECT 1 FROM users WHERE user_id = $1", user_id) is None:
            raise NotFound(f"user {user_id!r} not found")

    @classmethod
    async def require_member(cls, conn: asyncpg.Connection, org_id: str, user_id: str) -> None:
        """FailedPrecondition unless the user belongs to the org (NotFound for an unknown user)."""
        if await conn.fetchval("SELECT 1 FROM org_members WHERE org_id = $1 AND user_id = $2",
                               org_id, user_id) is None:
            await cls.require_user(conn, user_id)
            raise FailedPrecondition(f"user {user_id!r} is not a member of {org_id!r}")
