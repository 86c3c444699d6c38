"""PostgreSQL storage of the credit authority: every SQL statement lives here.

The hot path calls the server-side functions of migrations/functions/
(credit_reserve_op, credit_commit, credit_release alone; credit_batch for a
batch; one round trip each); administration runs short explicit transactions
that lock the pool row before an allocation row. All statements are parameterized.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from . import metrics
from .errors import (
    ACCOUNT_TOTAL_LIMIT,
    ALLOCATION_BELOW_COMMITTED,
    AlreadyExists,
    FailedPrecondition,
    InsufficientCredits,
    NotFound,
    PermissionDenied,
)

# Roles whose service keys may act for the other members of their organization.
KEY_SERVICE_ROLES = ("owner", "admin")


def funding_label(funding_kind: str, org_id: str | None) -> str:
    return f"org:{org_id}" if funding_kind == "org" else "individual"


@dataclass(frozen=True)
class Balance:
    funding_kind: str
    org_id: str | None
    limit_mc: int
    used_mc: int
    held_mc: int

    @property
    def available_mc(self) -> int:
        return self.limit_mc - self.used_mc - self.held_mc


@dataclass(frozen=True)
class Hold:
    reservation_id: uuid.UUID
    funding_kind: str
    org_id: str | None
    reserved_mc: int
    available_mc: int
    expires_at: datetime
    replayed: bool = False
    status: str = "held"


@dataclass(frozen=True)
class Charge:
    charged_mc: int
    available_mc: int
    overrun: bool
    late: bool
    funding_kind: str
    org_id: str | None


@dataclass(frozen=True)
class OrgSummary:
    org_id: str
    name: str
    pool_total_mc: int
    allocated_mc: int
    used_mc: int
    held_mc: int
    created_at: datetime


@dataclass(frozen=True)
class MemberRow:
    org_id: str
    user_id: str
    role: str
    is_default: bool
    allocation_mc: int
    used_mc: int
    held_mc: int
    joined_at: datetime


@dataclass(frozen=True)
class ApiKeyRow:
    key_id: str
    user_id: str
    org_id: str | None
    kind: str
    name: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class UserRow:
    user_id: str
    display_name: str
    email: str
    created_at: datetime


def _raise_resolution(outcome: str, user_id: str, org_id: str) -> None:
    if outcome == "unknown_user":
        raise NotFound(f"user {user_id!r} not found")
    if outcome == "unknown_org":
        raise NotFound(f"organization {org_id!r} not found")
    if outcome == "not_member":
        raise PermissionDenied(f"user {user_id!r} is not a member of organization {org_id!r}")


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset: nothing to undo. The authority never changes session state (no SET,
    LISTEN, advisory lock or cursor outside a transaction; asyncpg itself still rolls
    back a transaction left open), so the default reset query, one more round trip
    after every call, is skipped."""


# The largest total an account may reach (pool total, allocation or balance limit, used credits):
# 2^62 − 1 millicredits, so that limit − used − held stays inside BIGINT (migrations/0010).
MAX_ACCOUNT_TOTAL_MC = 2**62 - 1


def _past_largest_total(what: str) -> FailedPrecondition:
    return FailedPrecondition(f"{what} would pass the largest account total ({MAX_ACCOUNT_TOTAL_MC} millicredits)",
                              ACCOUNT_TOTAL_LIMIT, {"limit": str(MAX_ACCOUNT_TOTAL_MC)})


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


USAGE_FILTER = """ WHERE ($1::text IS NULL OR org_id = $1)
                      AND ($2::text IS NULL OR user_id = $2)
                      AND ($3::text IS NULL OR service_type = $3)
                      AND ($4::text IS NULL OR service_name = $4)
                      AND ($5::timestamptz IS NULL OR created_at >= $5)
                      AND ($6::timestamptz IS NULL OR created_at < $6)"""
# One fixed statement per grouping; the request picks one by enum, never by text.
USAGE_GROUP_SQL = {
    group: f"SELECT {key} AS key, count(*) AS requests, sum(credits_used)::BIGINT AS mc"
           " FROM usage_attribution" + USAGE_FILTER + " GROUP BY 1 ORDER BY 3 DESC, 1 LIMIT $7"
    for group, key in {
        "user": "user_id",
        "model": "service_name",
        "service_type": "service_type",
        "day": "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    }.items()
}


class HotPathBatcher:
    """Group commit for the hot path: Reserve, Commit and Release calls that arrive
    while earlier batches are in the database share the next transaction
    (credit_batch() in migrations/functions/). An idle system sends batches of one, so
    nothing waits for a timer; a busy account pays one row lock, one WAL flush and
    one round trip per batch. Every caller is answered only after its batch committed.
    """

    _SQL = "SELECT * FROM credit_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"

    def __init__(self, pool: asyncpg.Pool, max_batch: int = 256, max_in_flight: int = 1):
        self._pool = pool
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._queue: list[tuple[tuple, asyncio.Future]] = []
        self._in_flight = 0
        self.batches = 0
        self.operations = 0

    def claim_direct(self) -> bool:
        """When nothing is queued or in the database, a lone call takes the single-call
        path (simpler SQL, same guarantees), holding an in-flight slot meanwhile."""
        if self._in_flight or self._queue:
            return False
        self._in_flight += 1
        return True

    def release_direct(self) -> None:
        self._in_flight -= 1
        if self._queue and self._in_flight < self._max_in_flight:
            self._launch()

    async def run(self, operation: tuple) -> asyncpg.Record:
        future = asyncio.get_running_loop().create_future()
        self._queue.append((operation, future))
        if self._in_flight < self._max_in_flight:
            self._launch()
        return await future

    def _launch(self) -> None:
        batch, self._queue = self._queue[:self._max_batch], self._queue[self._max_batch:]
        self._in_flight += 1
        asyncio.get_running_loop().create_task(self._execute(batch))

    async def _execute(self, batch: list[tuple[tuple, asyncio.Future]]) -> None:
        try:
            columns = list(zip(*(operation for operation, _ in batch), strict=True))
            rows = await self._pool.fetch(self._SQL, *columns)
            metrics.BATCH_SIZE.observe(len(batch))
            self.batches += 1
            self.operations += len(batch)
            for row in rows:
                future = batch[row["idx"] - 1][1]
                if not future.done():
                    future.set_result(row)
        except BaseException as error:  # the whole transaction failed: every caller hears it
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
        finally:
            self._in_flight -= 1
            if self._queue and self._in_flight < self._max_in_flight:
                self._launch()


class Storage:
    """The authority's only door to PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool, batcher: HotPathBatcher | None = None):
        self._pool = pool
        self._batcher = batcher

    @classmethod
    async def connect(cls, database_url: str, min_size: int = 2, max_size: int = 10, *,
                      batch_max: int = 256, batch_in_flight: int = 1) -> Storage:
        pool = await asyncpg.create_pool(
            database_url, min_size=min_size, max_size=max_size, init=_init_connection, reset=_keep_session,
            command_timeout=30, max_inactive_connection_lifetime=60,
        )
        batcher = HotPathBatcher(pool, batch_max, min(batch_in_flight, max_size)) if batch_max > 1 else None
        return cls(pool, batcher)

    async def close(self) -> None:
        await self._pool.close()

    async def ping(self) -> None:
        await self._pool.fetchval("SELECT 1")

    # ---- hot path -------------------------------------------------------

    async def balance(self, user_id: str, org_id: str) -> Balance:
        row = await self._pool.fetchrow("SELECT * FROM credit_balance($1, $2)", user_id, org_id)
        _raise_resolution(row["outcome"], user_id, org_id)
        return Balance(row["funding_kind"], row["org_id"], row["limit_mc"], row["used_mc"], row["held_mc"])

    async def _hot_path(self, operation: tuple, sql: str, *args: Any) -> tuple[asyncpg.Record, bool]:
        """Runs one hot-path operation: in the next batch (credit_batch) when others are queued
        or in flight, else alone through its single-call function. Returns (row, batched)."""
        if self._batcher is not None and not self._batcher.claim_direct():
            return await self._batcher.run(operation), True
        try:
            return await self._pool.fetchrow(sql, *args), False
        finally:
            if self._batcher is not None:
                self._batcher.release_direct()

    async def reserve(self, *, caller: str, request_id: str, request_hash: bytes, user_id: str,
                      org_id: str, amount_mc: int, ttl_seconds: int, service_type: str,
                      service_name: str, metadata: dict[str, Any]) -> Hold:
        for _ in range(5):
            row, batched = await self._hot_path(
                ("reserve", caller, request_id, request_hash, user_id, org_id, amount_mc, ttl_seconds,
                 service_type, service_name, metadata, None, None),
                "SELECT * FROM credit_reserve_op($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                caller, request_id, request_hash, user_id, org_id, amount_mc, ttl_seconds,
                service_type, service_name, metadata)
            outcome = row["outcome"]
            reserved, status = row["amount_mc" if batched else "reserved_mc"], row["status"]
            if outcome != "retry":  # "retry": a concurrent Reserve with this request_id won the race
                break
            metrics.RESERVE_RETRIES.labels("batch" if batched else "single").inc()
        else:  # pragma: no cover - a duplicate that never settles
            raise FailedPrecondition(f"request_id {request_id!r} is being reserved concurrently; retry")
        _raise_resolution(outcome, user_id, org_id)
        if outcome == "conflict":
            raise AlreadyExists(f"request_id {request_id!r} was already used with different arguments")
        if outcome == "insufficient":
            raise InsufficientCredits(row["available_mc"] or 0, amount_mc,
                                      funding_label(row["funding_kind"], row["org_id"]))
        return Hold(row["reservation_id"], row["funding_kind"], row["org_id"], reserved,
                    row["available_mc"] or 0, row["expires_at"], outcome == "replay", status)

    async def commit(self, *, caller: str, reservation_id: uuid.UUID, amount_mc: int,
                     metadata: dict[str, Any]) -> Charge:
        row, batched = await self._hot_path(
            ("commit", caller, None, None, None, None, amount_mc, None, None, None, metadata, reservation_id, None),
            "SELECT * FROM credit_commit($1, $2, $3, $4)", caller, reservation_id, amount_mc, metadata)
        charged = row["amount_mc" if batched else "charged_mc"]
        outcome = row["outcome"]
        if outcome == "not_found":
            raise NotFound(f"reservation {reservation_id} not found")
        if outcome == "out_of_range":
            raise _past_largest_total(f"the used credits of reservation {reservation_id}'s account")
        if outcome == "finalized":
            raise FailedPrecondition(
                f"reservation {reservation_id} is already finalized"
                + (f" (committed {charged} millicredits)" if charged is not None else " (released)"))
        return Charge(charged, row["available_mc"], row["overrun"], row["late"], row["funding_kind"], row["org_id"])

    async def release(self, *, caller: str, reservation_id: uuid.UUID, reason: str) -> None:
        row, _ = await self._hot_path(
            ("release", caller, None, None, None, None, None, None, None, None, None, reservation_id, reason),
            "SELECT credit_release($1, $2, $3) AS outcome", caller, reservation_id, reason)
        outcome = row["outcome"]
        if outcome == "not_found":
            raise NotFound(f"reservation {reservation_id} not found")
        if outcome == "finalized":
            raise FailedPrecondition(f"reservation {reservation_id} is already committed")

    async def outstanding_holds(self) -> tuple[int, int]:
        row = await self._pool.fetchrow(
            "SELECT count(*) AS n, coalesce(sum(amount_mc), 0)::BIGINT AS mc FROM reservations WHERE status = 'held'")
        return row["n"], row["mc"]

    def pool_stats(self) -> tuple[int, int]:
        return self._pool.get_size(), self._pool.get_idle_size()

    async def expire_holds(self, batch: int) -> int:
        return await self._pool.fetchval("SELECT credit_expire_holds($1)", batch)

    # ---- users, organizations, members ------------------------------------

    async def create_user(self, user_id: str, display_name: str, email: str) -> UserRow:
        row = await self._pool.fetchrow(
            """INSERT INTO users (user_id, display_name, email) VALUES ($1, $2, $3)
               ON CONFLICT (user_id) DO NOTHING RETURNING *""", user_id, display_name, email)
        if row is None:
            raise AlreadyExists(f"user {user_id!r} already exists")
        return UserRow(row["user_id"], row["display_name"], row["email"], row["created_at"])

    async def create_organization(self, org_id: str, name: str) -> OrgSummary:
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """INSERT INTO organizations (org_id, name) VALUES ($1, $2)
                   ON CONFLICT (org_id) DO NOTHING RETURNING created_at""", org_id, name)
            if row is None:
                raise AlreadyExists(f"organization {org_id!r} already exists")
            await conn.execute("INSERT INTO org_pools (org_id) VALUES ($1)", org_id)
        return OrgSummary(org_id, name, 0, 0, 0, 0, row["created_at"])

    async def _require_org(self, conn: asyncpg.Connection, org_id: str, lock: bool = False) -> asyncpg.Record:
        sql = "SELECT * FROM org_pools WHERE org_id = $1"
        row = await conn.fetchrow(sql + (" FOR UPDATE" if lock else ""), org_id)
        if row is None:
            raise NotFound(f"organization {org_id!r} not found")
        return row

    async def _require_user(self, conn: asyncpg.Connection, user_id: str) -> None:
        if await conn.fetchval("SELECT 1 FROM users WHERE user_id = $1", user_id) is None:
            raise NotFound(f"user {user_id!r} not found")

    async def _require_member(self, conn: asyncpg.Connection, org_id: str, user_id: str) -> None:
        """FailedPrecondition unless the user belongs to the org (NotFound for an unknown user)."""
        if await conn.fetchval("SELECT 1 FROM org_members WHERE org_id = $1 AND user_id = $2",
                               org_id, user_id) is None:
            await self._require_user(conn, user_id)
            raise FailedPrecondition(f"user {user_id!r} is not a member of {org_id!r}")

    async def add_member(self, org_id: str, user_id: str, role: str, is_default: bool) -> MemberRow:
        async with self._pool.acquire() as conn, conn.transaction():
            await self._require_org(conn, org_id)
            await self._require_user(conn, user_id)
            # Lock the user's memberships so two concurrent default changes serialize.
            await conn.execute("SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE", user_id)
            if is_default:
                await conn.execute("UPDATE org_members SET is_default = false WHERE user_id = $1 AND is_default",
                                   user_id)
            row = await conn.fetchrow(
                """INSERT INTO org_members (org_id, user_id, role, is_default) VALUES ($1, $2, $3, $4)
                   ON CONFLICT (org_id, user_id) DO NOTHING RETURNING joined_at""",
                org_id, user_id, role, is_default)
            if row is None:
                raise AlreadyExists(f"user {user_id!r} is already a member of {org_id!r}")
        return MemberRow(org_id, user_id, role, is_default, 0, 0, 0, row["joined_at"])

    async def remove_member(self, org_id: str, user_id: str) -> int:
        """Removes the membership; the unused allocation returns to the pool. Returns that amount."""
        async with self._pool.acquire() as conn, conn.transaction():
            await self._require_org(conn, org_id, lock=True)
            member = await conn.fetchrow(
                "SELECT 1 FROM org_members WHERE org_id = $1 AND user_id = $2 FOR UPDATE", org_id, user_id)
            if member is None:
                raise NotFound(f"user {user_id!r} is not a member of {org_id!r}")
            alloc = await conn.fetchrow(
                "SELECT * FROM allocations WHERE org_id = $1 AND user_id = $2 FOR UPDATE", org_id, user_id)
            returned = 0
            if alloc is not None:
                if alloc["held_mc"] > 0:
                    raise FailedPrecondition(
                        f"member {user_id!r} has {alloc['held_mc']} millicredits on hold; "
                        "release or commit them before removing the member")
                returned = max(alloc["limit_mc"] - alloc["used_mc"], 0)
                if returned:
                    await self._change_allocation(conn, org_id, user_id, -returned, "member removed")
            await conn.execute("DELETE FROM org_members WHERE org_id = $1 AND user_id = $2", org_id, user_id)
            # Keys bound to this org bill its credits: they leave with the member (a later
            # AddMember does not bring them back).
            await conn.execute(
                """UPDATE api_keys SET revoked_at = now()
                    WHERE org_id = $1 AND user_id = $2 AND revoked_at IS NULL""", org_id, user_id)
        return returned

    # ---- pools, allocations, grants ------------------------------------

    async def top_up_pool(self, org_id: str, amount_mc: int, purchase_reference: str,
                          purchase_amount: str | None, purchase_currency: str) -> OrgSummary:
        """Adds credits to the pool once per purchase reference: a retry with the same amount replays,
        another amount is AlreadyExists. Simultaneous top-ups of one org queue on the pool row; the
        insert is race-safe by itself too (ON CONFLICT DO NOTHING, then the stored amount decides)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await self._require_org(conn, org_id, lock=True)
            inserted = await conn.fetchval(
                """INSERT INTO pool_top_ups (org_id, amount_mc, purchase_reference, purchase_amount,
                                             purchase_currency) VALUES ($1, $2, $3, $4::numeric, $5)
                   ON CONFLICT (org_id, purchase_reference) DO NOTHING RETURNING top_up_id""",
                org_id, amount_mc, purchase_reference, purchase_amount, purchase_currency)
            if inserted is None:
                previous = await conn.fetchval(
                    "SELECT amount_mc FROM pool_top_ups WHERE org_id = $1 AND purchase_reference = $2",
                    org_id, purchase_reference)
                if previous != amount_mc:
                    raise AlreadyExists(
                        f"purchase_reference {purchase_reference!r} was already used with another amount")
            else:
                updated = await conn.execute(
                    """UPDATE org_pools SET total_mc = total_mc + $2
                       WHERE org_id = $1 AND total_mc <= $3::bigint - $2::bigint""",
                    org_id, amount_mc, MAX_ACCOUNT_TOTAL_MC)
                if updated == "UPDATE 0":
                    raise _past_largest_total(f"the pool of {org_id!r}")
                await conn.execute(
                    """INSERT INTO ledger_entries (account, org_id, kind, delta_limit_mc, note)
                       VALUES ('pool', $1, 'top_up', $2, $3)""", org_id, amount_mc, purchase_reference)
        return await self.get_organization(org_id)

    async def _change_allocation(self, conn: asyncpg.Connection, org_id: str, user_id: str,
                                 delta_mc: int, note: str) -> None:
        """Moves an allocation's limit by delta (pool row already locked)."""
        updated = await conn.execute(
            """UPDATE allocations SET limit_mc = limit_mc + $3, updated_at = now()
               WHERE org_id = $1 AND user_id = $2""", org_id, user_id, delta_mc)
        if updated == "UPDATE 0":
            await conn.execute("INSERT INTO allocations (org_id, user_id, limit_mc) VALUES ($1, $2, $3)",
                               org_id, user_id, delta_mc)
        await conn.execute("UPDATE org_pools SET allocated_mc = allocated_mc + $2 WHERE org_id = $1",
                           org_id, delta_mc)
        await conn.execute(
            """INSERT INTO ledger_entries (account, org_id, user_id, kind, delta_limit_mc, note)
               VALUES ('allocation', $1, $2, 'allocation', $3, $4)""", org_id, user_id, delta_mc, note)

    async def set_allocation(self, org_id: str, user_id: str, allocation_mc: int, allocated_by: str) -> MemberRow:
        async with self._pool.acquire() as conn, conn.transaction():
            pool = await self._require_org(conn, org_id, lock=True)
            await self._require_member(conn, org_id, user_id)
            alloc = await conn.fetchrow(
                "SELECT * FROM allocations WHERE org_id = $1 AND user_id = $2 FOR UPDATE", org_id, user_id)
            current = alloc["limit_mc"] if alloc else 0
            committed = (alloc["used_mc"] + alloc["held_mc"]) if alloc else 0
            if allocation_mc < committed:
                raise FailedPrecondition(
                    f"allocation {allocation_mc} is below what {user_id!r} already used or holds ({committed})",
                    ALLOCATION_BELOW_COMMITTED,
                    {"allocation": str(allocation_mc), "committed": str(committed), "user_id": user_id})
            unallocated = pool["total_mc"] - pool["allocated_mc"]
            delta = allocation_mc - current
            if delta > unallocated:
                raise InsufficientCredits(unallocated, delta, f"pool:{org_id}")
            if delta:
                await self._change_allocation(conn, org_id, user_id, delta, f"set by {allocated_by}".strip())
        return await self.get_member(org_id, user_id)

    async def grant_individual(self, user_id: str, amount_mc: int, reason: str, reference: str) -> Balance:
        """Adds credits once per (user, reference): a retry with the same amount replays (returns the
        balance), another amount is AlreadyExists. Of simultaneous grants with one reference, one
        inserts; the others wait on the unique index for it to commit, then find its row."""
        async with self._pool.acquire() as conn, conn.transaction():
            await self._require_user(conn, user_id)
            inserted = await conn.fetchval(
                """INSERT INTO individual_grants (user_id, amount_mc, reason, reference) VALUES ($1, $2, $3, $4)
                   ON CONFLICT (user_id, reference) DO NOTHING RETURNING grant_id""",
                user_id, amount_mc, reason, reference)
            if inserted is None:
                previous = await conn.fetchval(
                    "SELECT amount_mc FROM individual_grants WHERE user_id = $1 AND reference = $2",
                    user_id, reference)
                if previous != amount_mc:
                    raise AlreadyExists(f"grant reference {reference!r} was already used with another amount")
                return await self._individual(conn, user_id)
            granted = await conn.fetchval(
                """INSERT INTO individual_balances (user_id, limit_mc) VALUES ($1, $2)
                   ON CONFLICT (user_id) DO UPDATE
                   SET limit_mc = individual_balances.limit_mc + $2, updated_at = now()
                   WHERE individual_balances.limit_mc <= $3::bigint - $2::bigint RETURNING user_id""",
                user_id, amount_mc, MAX_ACCOUNT_TOTAL_MC)
            if granted is None:
                raise _past_largest_total(f"the individual balance of {user_id!r}")
            await conn.execute(
                """INSERT INTO ledger_entries (account, user_id, kind, delta_limit_mc, note)
                   VALUES ('individual', $1, 'grant', $2, $3)""", user_id, amount_mc, reason)
            return await self._individual(conn, user_id)

    async def _individual(self, conn: asyncpg.Connection, user_id: str) -> Balance:
        row = await conn.fetchrow("SELECT * FROM individual_balances WHERE user_id = $1", user_id)
        return Balance("individual", None, row["limit_mc"], row["used_mc"], row["held_mc"])

    # ---- reads ------------------------------------------------------------

    async def get_organization(self, org_id: str) -> OrgSummary:
        row = await self._pool.fetchrow(
            """SELECT o.org_id, o.name, o.created_at, p.total_mc, p.allocated_mc,
                      coalesce(sum(a.used_mc), 0)::BIGINT AS used_mc,
                      coalesce(sum(a.held_mc), 0)::BIGINT AS held_mc
                 FROM organizations o JOIN org_pools p USING (org_id)
                 LEFT JOIN allocations a USING (org_id)
                WHERE o.org_id = $1
                GROUP BY o.org_id, o.name, o.created_at, p.total_mc, p.allocated_mc""", org_id)
        if row is None:
            raise NotFound(f"organization {org_id!r} not found")
        return OrgSummary(row["org_id"], row["name"], row["total_mc"], row["allocated_mc"],
                          row["used_mc"], row["held_mc"], row["created_at"])

    _MEMBER_SELECT = """SELECT m.org_id, m.user_id, m.role, m.is_default, m.joined_at,
                               coalesce(a.limit_mc, 0) AS limit_mc, coalesce(a.used_mc, 0) AS used_mc,
                               coalesce(a.held_mc, 0) AS held_mc
                          FROM org_members m
                          LEFT JOIN allocations a ON a.org_id = m.org_id AND a.user_id = m.user_id"""

    @staticmethod
    def _member(row: asyncpg.Record) -> MemberRow:
        return MemberRow(row["org_id"], row["user_id"], row["role"], row["is_default"],
                         row["limit_mc"], row["used_mc"], row["held_mc"], row["joined_at"])

    async def get_member(self, org_id: str, user_id: str) -> MemberRow:
        row = await self._pool.fetchrow(self._MEMBER_SELECT + " WHERE m.org_id = $1 AND m.user_id = $2",
                                        org_id, user_id)
        if row is None:
            raise NotFound(f"user {user_id!r} is not a member of {org_id!r}")
        return self._member(row)

    async def list_members(self, org_id: str) -> list[MemberRow]:
        async with self._pool.acquire() as conn:
            await self._require_org(conn, org_id)
            rows = await conn.fetch(self._MEMBER_SELECT + " WHERE m.org_id = $1 ORDER BY m.join_seq", org_id)
        return [self._member(r) for r in rows]

    async def user_exists(self, user_id: str) -> bool:
        return await self._pool.fetchval("SELECT 1 FROM users WHERE user_id = $1", user_id) is not None

    # ---- usage ------------------------------------------------------------

    async def query_usage(self, *, org_id: str | None, user_id: str | None, service_type: str | None,
                          model: str | None, start: datetime | None, end: datetime | None,
                          group_by: str | None, limit: int) -> tuple[list[dict], list[dict], int, int]:
        """Returns (records, groups, total_mc, total_requests)."""
        filters = (org_id, user_id, service_type, model, start, end)
        async with self._pool.acquire() as conn:
            totals = await conn.fetchrow(
                "SELECT count(*) AS n, coalesce(sum(credits_used), 0)::BIGINT AS mc FROM usage_attribution"
                + USAGE_FILTER, *filters)
            if group_by is None:
                rows = await conn.fetch(
                    "SELECT * FROM usage_attribution" + USAGE_FILTER
                    + " ORDER BY created_at DESC, attribution_id DESC LIMIT $7", *filters, limit)
                return [dict(r) for r in rows], [], totals["mc"], totals["n"]
            rows = await conn.fetch(USAGE_GROUP_SQL[group_by], *filters, limit)
            return [], [dict(r) for r in rows], totals["mc"], totals["n"]

    # ---- API keys ---------------------------------------------------------

    async def create_api_key(self, user_id: str, org_id: str | None, kind: str, name: str) -> tuple[ApiKeyRow, str]:
        key_id = "ck_" + secrets.token_hex(8)
        secret = f"{key_id}.{secrets.token_urlsafe(32)}"
        async with self._pool.acquire() as conn, conn.transaction():
            await self._require_user(conn, user_id)
            if org_id is not None:
                await self._require_org(conn, org_id)
                # Locked: a concurrent RemoveMember waits for this key, then revokes it with the others.
                role = await conn.fetchval(
                    "SELECT role FROM org_members WHERE org_id = $1 AND user_id = $2 FOR SHARE", org_id, user_id)
                if role is None:
                    raise FailedPrecondition(f"user {user_id!r} is not a member of {org_id!r}")
                if kind == "service" and role not in KEY_SERVICE_ROLES:
                    raise FailedPrecondition(
                        f"a service key acts for every member of {org_id!r}: its owner {user_id!r} "
                        "must be an owner or admin there")
            row = await conn.fetchrow(
                """INSERT INTO api_keys (key_id, secret_hash, user_id, org_id, kind, name)
                   VALUES ($1, $2, $3, $4, $5, $6) RETURNING *""",
                key_id, hash_secret(secret), user_id, org_id, kind, name)
        return self._api_key(row), secret

    @staticmethod
    def _api_key(row: asyncpg.Record) -> ApiKeyRow:
        return ApiKeyRow(row["key_id"], row["user_id"], row["org_id"], row["kind"], row["name"],
                         row["created_at"], row["revoked_at"])

    async def revoke_api_key(self, key_id: str) -> ApiKeyRow:
        row = await self._pool.fetchrow(
            """UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
               WHERE key_id = $1 RETURNING *""", key_id)
        if row is None:
            raise NotFound(f"API key {key_id!r} not found")
        return self._api_key(row)

    async def find_api_key(self, key_id: str) -> tuple[ApiKeyRow, bytes, bool] | None:
        """(key, secret hash, usable now). Usable: not revoked and, for a key bound to an org,
        its owner is still a member there (and, for a service key, an owner or admin). Checked
        at every use, in one primary-key lookup on each table: VerifyApiKey is on the REST path."""
        row = await self._pool.fetchrow(
            """SELECT k.*, k.revoked_at IS NULL
                           AND (k.org_id IS NULL
                                OR (m.role IS NOT NULL AND (k.kind = 'user' OR m.role = ANY($2::text[]))))
                           AS usable
                 FROM api_keys k
                 LEFT JOIN org_members m ON m.org_id = k.org_id AND m.user_id = k.user_id
                WHERE k.key_id = $1""", key_id, list(KEY_SERVICE_ROLES))
        if row is None:
            return None
        return self._api_key(row), bytes(row["secret_hash"]), row["usable"]

    async def list_api_keys(self, user_id: str | None, org_id: str | None) -> list[ApiKeyRow]:
        rows = await self._pool.fetch(
            """SELECT * FROM api_keys WHERE ($1::text IS NULL OR user_id = $1)
                 AND ($2::text IS NULL OR org_id = $2) ORDER BY created_at DESC, key_id""", user_id, org_id)
        return [self._api_key(r) for r in rows]

    # ---- low-balance alerts (migrations/0005_alerts.sql) -------------------

    MAX_ALERT_THRESHOLDS_PER_ORG = 100  # bounds the work of the commit trigger

    async def set_alert_webhook(self, org_id: str, url: str, secret: str) -> dict[str, Any] | None:
        """Stores (or with an empty url removes) the org's webhook; returns the row, or None when removed."""
        async with self._pool.acquire() as conn, conn.transaction():
            await self._require_org(conn, org_id)
            if not url:
                await conn.execute("DELETE FROM alert_webhooks WHERE org_id = $1", org_id)
                return None
            row = await conn.fetchrow(
                """INSERT INTO alert_webhooks (org_id, url, secret) VALUES ($1, $2, $3)
                   ON CONFLICT (org_id) DO UPDATE SET url = $2, secret = $3, updated_at = now()
                   RETURNING *""", org_id, url, secret)
        return dict(row)

    async def get_alert_webhook(self, org_id: str) -> dict[str, Any] | None:
        async with self._pool.acquire() as conn:
            await self._require_org(conn, org_id)
            row = await conn.fetchrow("SELECT * FROM alert_webhooks WHERE org_id = $1", org_id)
        return dict(row) if row else None

    _THRESHOLD_SELECT = """
        SELECT t.*, x.base_mc, x.remaining_mc,
               credit_alert_threshold_mc(t.kind, t.value, x.base_mc) AS threshold_mc
          FROM alert_thresholds t
          JOIN org_pools p ON p.org_id = t.org_id
          LEFT JOIN allocations a ON a.org_id = t.org_id AND a.user_id = t.user_id
          CROSS JOIN LATERAL (
              SELECT CASE WHEN t.user_id IS NULL THEN p.total_mc ELSE coalesce(a.limit_mc, 0) END AS base_mc,
                     CASE WHEN t.user_id IS NULL
                          THEN p.total_mc - (SELECT coalesce(sum(u.used_mc), 0) FROM allocations u
                                              WHERE u.org_id = t.org_id)
                          ELSE coalesce(a.limit_mc, 0) - coalesce(a.used_mc, 0) END::BIGINT AS remaining_mc) x"""

    @staticmethod
    async def _pool_remaining(conn: asyncpg.Connection, org_id: str) -> tuple[int, int]:
        """(pool total, total − what all allocations used) of an org."""
        pool = await conn.fetchrow(
            """SELECT p.total_mc, coalesce(sum(a.used_mc), 0)::BIGINT AS used_mc
                 FROM org_pools p LEFT JOIN allocations a USING (org_id)
                WHERE p.org_id = $1 GROUP BY p.total_mc""", org_id)
        return pool["total_mc"], pool["total_mc"] - pool["used_mc"]

    @staticmethod
    async def _lock_org_allocations(conn: asyncpg.Connection, org_id: str) -> None:
        """Locks the org's allocation rows in the one account order that hot-path batches (credit_batch)
        and the sweeper (credit_expire_holds) use too: credit_account_lock_key (migrations/0009)."""
        await conn.execute(
            """SELECT 1 FROM allocations WHERE org_id = $1
                ORDER BY credit_account_lock_key('org', org_id, user_id) FOR UPDATE""", org_id)

    @staticmethod
    async def _rewatch(conn: asyncpg.Connection, org_id: str) -> None:
        """alert_watch on exactly the allocations a threshold watches (allocations already locked)."""
        await conn.execute(
            """UPDATE allocations a SET alert_watch = w.watched
                 FROM (SELECT x.user_id, EXISTS (SELECT 1 FROM alert_thresholds t
                                                  WHERE t.org_id = x.org_id
                                                    AND (t.user_id IS NULL OR t.user_id = x.user_id)) AS watched
                         FROM allocations x WHERE x.org_id = $1) w
                WHERE a.org_id = $1 AND a.user_id = w.user_id AND a.alert_watch IS DISTINCT FROM w.watched""",
            org_id)

    async def create_alert_threshold(self, org_id: str, user_id: str | None, kind: str, value: int) -> dict[str, Any]:
        """Adds a threshold, fired already when remaining is at or below it (no alert for that)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await self._require_org(conn, org_id)
            await self._lock_org_allocations(conn, org_id)
            count = await conn.fetchval("SELECT count(*) FROM alert_thresholds WHERE org_id = $1", org_id)
            if count >= self.MAX_ALERT_THRESHOLDS_PER_ORG:
                raise FailedPrecondition(
                    f"organization {org_id!r} already has {count} alert thresholds (at most "
                    f"{self.MAX_ALERT_THRESHOLDS_PER_ORG})")
            if user_id is not None:
                await self._require_member(conn, org_id, user_id)
                # Locked above: this is ordered with the commits that fire its thresholds.
                alloc = await conn.fetchrow(
                    "SELECT limit_mc, used_mc FROM allocations WHERE org_id = $1 AND user_id = $2", org_id, user_id)
                base = alloc["limit_mc"] if alloc else 0
                remaining = (alloc["limit_mc"] - alloc["used_mc"]) if alloc else 0
            else:
                base, remaining = await self._pool_remaining(conn, org_id)
            threshold_id = await conn.fetchval(
                """INSERT INTO alert_thresholds (org_id, user_id, kind, value, state)
                   VALUES ($1, $2, $3, $4, CASE WHEN credit_alert_below($3, $4, $5, $6) THEN 'fired' ELSE 'armed' END)
                   RETURNING threshold_id""", org_id, user_id, kind, value, remaining, base)
            await self._rewatch(conn, org_id)
            row = await conn.fetchrow(self._THRESHOLD_SELECT + " WHERE t.org_id = $1 AND t.threshold_id = $2",
                                      org_id, threshold_id)
        return dict(row)

    async def delete_alert_threshold(self, org_id: str, threshold_id: int) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await self._lock_org_allocations(conn, org_id)
            deleted = await conn.execute(
                "DELETE FROM alert_thresholds WHERE org_id = $1 AND threshold_id = $2", org_id, threshold_id)
            if deleted == "DELETE 0":
                raise NotFound(f"alert threshold {threshold_id} of {org_id!r} not found")
            await self._rewatch(conn, org_id)

    async def list_alert_thresholds(self, org_id: str, user_id: str | None) -> list[dict[str, Any]]:
        async with self._pool.acquire() as conn:
            await self._require_org(conn, org_id)
            rows = await conn.fetch(
                self._THRESHOLD_SELECT + """ WHERE t.org_id = $1 AND ($2::text IS NULL OR t.user_id = $2)
                                             ORDER BY t.user_id NULLS FIRST, t.threshold_id""", org_id, user_id)
        return [dict(r) for r in rows]

    async def list_alert_events(self, org_id: str, user_id: str | None, limit: int) -> list[dict[str, Any]]:
        """Alerts newest first, each with its delivery attempts (oldest first) under "deliveries"."""
        async with self._pool.acquire() as conn:
            await self._require_org(conn, org_id)
            rows = await conn.fetch(
                """SELECT * FROM alert_events WHERE org_id = $1 AND ($2::text IS NULL OR user_id = $2)
                    ORDER BY created_at DESC, event_id DESC LIMIT $3""", org_id, user_id, limit)
            events = [dict(r) for r in rows]
            attempts = await conn.fetch(
                """SELECT * FROM alert_deliveries WHERE org_id = $1 AND event_id = ANY($2::BIGINT[])
                    ORDER BY event_id, attempt""", org_id, [e["event_id"] for e in events])
        by_event: dict[int, list[dict[str, Any]]] = {}
        for attempt in attempts:
            by_event.setdefault(attempt["event_id"], []).append(dict(attempt))
        for event in events:
            event["deliveries"] = by_event.get(event["event_id"], [])
        return events

    async def process_alert_checks(self, limit: int = 100) -> tuple[int, int]:
        """The worker's half of pool thresholds: consumes queued checks, locks each threshold and
        decides on committed data (fire when armed and at or below, re-arm when above). Returns
        (checks consumed, alerts fired)."""
        fired = 0
        async with self._pool.acquire() as conn, conn.transaction():
            checks = await conn.fetch(
                """DELETE FROM alert_checks WHERE check_id IN (
                       SELECT check_id FROM alert_checks ORDER BY check_id LIMIT $1 FOR UPDATE SKIP LOCKED)
                   RETURNING org_id, threshold_id""", limit)
            for org_id, threshold_id in sorted({(c["org_id"], c["threshold_id"]) for c in checks}):
                threshold = await conn.fetchrow(
                    """SELECT * FROM alert_thresholds WHERE org_id = $1 AND threshold_id = $2 AND user_id IS NULL
                       FOR UPDATE""", org_id, threshold_id)
                if threshold is None:
                    continue
                total, remaining = await self._pool_remaining(conn, org_id)
                below = await conn.fetchval("SELECT credit_alert_below($1, $2, $3, $4)",
                                            threshold["kind"], threshold["value"], remaining, total)
                if below and threshold["state"] == "armed":
                    await conn.execute(
                        """UPDATE alert_thresholds SET state = 'fired', changed_at = now()
                            WHERE org_id = $1 AND threshold_id = $2""", org_id, threshold_id)
                    await conn.execute(
                        """INSERT INTO alert_events (org_id, threshold_id, user_id, kind, value, threshold_mc,
                                                     limit_mc, remaining_mc)
                           VALUES ($1, $2, NULL, $3, $4, credit_alert_threshold_mc($3, $4, $5), $5, $6)""",
                        org_id, threshold_id, threshold["kind"], threshold["value"], total, remaining)
                    fired += 1
                elif not below and threshold["state"] == "fired":
                    await conn.execute(
                        """UPDATE alert_thresholds SET state = 'armed', changed_at = now()
                            WHERE org_id = $1 AND threshold_id = $2""", org_id, threshold_id)
        return len(checks), fired

    async def claim_alert_deliveries(self, limit: int, lease_seconds: float) -> list[dict[str, Any]]:
        """Leases due pending alerts to this worker (other replicas skip them) and counts the attempt.
        Alerts of an org without a webhook are marked no_webhook instead."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """UPDATE alert_events e SET status = 'no_webhook', lease_until = NULL
                    WHERE e.status = 'pending' AND e.next_attempt_at <= now()
                      AND NOT EXISTS (SELECT 1 FROM alert_webhooks w WHERE w.org_id = e.org_id)""")
            rows = await conn.fetch(
                """UPDATE alert_events e
                      SET lease_until = now() + make_interval(secs => $2), attempts = e.attempts + 1
                     FROM (SELECT org_id, event_id FROM alert_events
                            WHERE status = 'pending' AND next_attempt_at <= now()
                              AND (lease_until IS NULL OR lease_until < now())
                            ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) due,
                          alert_webhooks w
                    WHERE e.org_id = due.org_id AND e.event_id = due.event_id AND w.org_id = e.org_id
                RETURNING e.*, w.url AS webhook_url, w.secret AS webhook_secret""", limit, lease_seconds)
        return [dict(r) for r in rows]

    async def record_alert_delivery(self, org_id: str, event_id: int, attempt: int, url: str,
                                    status_code: int | None, error: str, duration_ms: int, delivered: bool,
                                    retry_in_seconds: float | None) -> None:
        """Records one attempt; the alert becomes delivered, pending again (retry_in_seconds) or failed."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """INSERT INTO alert_deliveries (org_id, event_id, attempt, url, status_code, error, duration_ms)
                   VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING""",
                org_id, event_id, attempt, url, status_code, error, duration_ms)
            await conn.execute(
                """UPDATE alert_events
                      SET status = CASE WHEN $3 THEN 'delivered' WHEN $4::float8 IS NULL THEN 'failed'
                                        ELSE 'pending' END,
                          delivered_at = CASE WHEN $3 THEN now() END,
                          next_attempt_at = CASE WHEN $4::float8 IS NULL THEN next_attempt_at
                                                 ELSE now() + make_interval(secs => $4::float8) END,
                          last_status_code = $5, last_error = $6, lease_until = NULL
                    WHERE org_id = $1 AND event_id = $2""",
                org_id, event_id, delivered, retry_in_seconds, status_code, error)

    async def next_alert_due_seconds(self) -> float | None:
        """Seconds until the next pending alert is due (0 when overdue), or None when none is pending."""
        seconds = await self._pool.fetchval(
            """SELECT extract(epoch FROM min(greatest(next_attempt_at, coalesce(lease_until, next_attempt_at)))
                                         - now())::float8
                 FROM alert_events WHERE status = 'pending'""")
        return None if seconds is None else max(seconds, 0.0)
