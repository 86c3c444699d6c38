"""Rate limits (migrations/0013_rate_limits.sql): setting and listing the limits of a scope. Reserve,
Commit, Release and expiry enforce and advance them inside their own functions
(migrations/functions/credit_limit*.sql); here only the administration and the figures it shows."""

from __future__ import annotations

import asyncpg

from ..errors import InvalidArgument, NotFound
from ..model import LIMIT_NAMES, LimitScope, RateLimitRow
from .audit import aim_entry
from .common import Queries

# What is left now of each limit, computed as credit_limit_try counts it.
ROW_SQL = """
    SELECT l.*,
           CASE WHEN l.rpm IS NULL THEN 0 ELSE
               (l.rpm * credit_limit_interval_ns(l.rpm) - greatest(l.req_tat_ns - n.ns, 0))
               / credit_limit_interval_ns(l.rpm) END AS requests_remaining,
           CASE WHEN l.tpm IS NULL THEN 0 ELSE
               (l.tpm * credit_limit_interval_ns(l.tpm) - greatest(l.tok_tat_ns - n.ns, 0))
               / credit_limit_interval_ns(l.tpm) END AS tokens_remaining,
           CASE WHEN l.day_start = (now() AT TIME ZONE 'UTC')::DATE THEN l.day_mc ELSE 0 END AS credits_today_mc,
           CASE WHEN l.month_start = date_trunc('month', now() AT TIME ZONE 'UTC')::DATE THEN l.month_mc ELSE 0 END
               AS credits_this_month_mc
      FROM rate_limits l, (SELECT (extract(epoch FROM now()) * 1000000000)::BIGINT AS ns) n"""

UPSERT_SQL = """
    INSERT INTO rate_limits AS r (scope_key, scope, org_id, user_id, key_id, rpm, tpm, max_parallel,
                                  credits_per_day_mc, credits_per_month_mc, updated_by)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
    ON CONFLICT (scope_key) DO UPDATE
       SET rpm = CASE WHEN $12 THEN NULL ELSE coalesce(EXCLUDED.rpm, r.rpm) END,
           tpm = CASE WHEN $12 THEN NULL ELSE coalesce(EXCLUDED.tpm, r.tpm) END,
           max_parallel = CASE WHEN $12 THEN NULL ELSE coalesce(EXCLUDED.max_parallel, r.max_parallel) END,
           credits_per_day_mc = CASE WHEN $12 THEN NULL
                                     ELSE coalesce(EXCLUDED.credits_per_day_mc, r.credits_per_day_mc) END,
           credits_per_month_mc = CASE WHEN $12 THEN NULL
                                       ELSE coalesce(EXCLUDED.credits_per_month_mc, r.credits_per_month_mc) END,
           updated_at = now(), updated_by = EXCLUDED.updated_by
    RETURNING limit_id"""


def rate_limit_row(row: asyncpg.Record) -> RateLimitRow:
    scope = LimitScope(row["scope"], row["org_id"], row["user_id"], row["key_id"])
    return RateLimitRow(scope, row["rpm"], row["tpm"], row["max_parallel"], row["credits_per_day_mc"],
                        row["credits_per_month_mc"], row["requests_remaining"], row["tokens_remaining"],
                        row["open_holds"], row["credits_today_mc"], row["credits_this_month_mc"], row["updated_at"],
                        row["updated_by"])


class RateLimitQueries(Queries):
    async def resolve_limit_scope(self, conn: asyncpg.Connection, org_id: str, user_id: str,
                                  key_id: str) -> LimitScope:
        """The scope the request names, checked against the rows: a key (its org and owner filled in, and
        matching org_id when given), a member (who must belong to the org), an org, an individual user."""
        if key_id:
            key = await conn.fetchrow("SELECT org_id, user_id FROM api_keys WHERE key_id = $1", key_id)
            if key is None:
                raise NotFound(f"API key {key_id!r} not found")
            if org_id and key["org_id"] != org_id:
                raise InvalidArgument("key_id", f"key {key_id} does not belong to organization {org_id!r}")
            if user_id and key["user_id"] != user_id:
                raise InvalidArgument("key_id", f"key {key_id} does not belong to user {user_id!r}")
            return LimitScope("key", key["org_id"], key["user_id"], key_id)
        if org_id:
            await self.require_org(conn, org_id)
        if user_id:
            await self.require_user(conn, user_id)
        if org_id and user_id:
            if await conn.fetchval("SELECT 1 FROM org_members WHERE org_id = $1 AND user_id = $2",
                                   org_id, user_id) is None:
                raise InvalidArgument("user_id", f"user {user_id!r} is not a member of {org_id!r}")
            return LimitScope("member", org_id, user_id, None)
        return LimitScope("org", org_id, None, None) if org_id else LimitScope("individual", None, user_id, None)

    async def set_rate_limit(self, org_id: str, user_id: str, key_id: str, limits: dict[str, int | None],
                             clear: bool, updated_by: str) -> RateLimitRow:
        """Sets the given limits of the scope (None: unchanged), or clears them all; returns the row."""
        async with self.writing() as conn:
            scope = await self.resolve_limit_scope(conn, org_id, user_id, key_id)
            await aim_entry(conn, "rate_limit", scope.org_id, scope.key)
            if scope.scope != "member" and (limits["credits_per_day_mc"] or limits["credits_per_month_mc"]):
                raise InvalidArgument("credits_per_day_millicredits" if limits["credits_per_day_mc"]
                                      else "credits_per_month_millicredits",
                                      "credit ceilings are set on a member (org_id and user_id)")
            limit_id = await conn.fetchval(UPSERT_SQL, scope.key, scope.scope, scope.org_id, scope.user_id,
                                           scope.key_id, *(None if clear else limits[n] for n in LIMIT_NAMES),
                                           updated_by, clear)
            return rate_limit_row(await conn.fetchrow(ROW_SQL + " WHERE l.limit_id = $1", limit_id))

    async def list_rate_limits(self, org_id: str, user_id: str) -> list[RateLimitRow]:
        """An org's rows (the org's, its members', its keys'; with user_id only the org's and that user's),
        or an individual user's (their own and their keys outside any org)."""
        async with self.pool.acquire() as conn:
            if org_id:
                await self.require_org(conn, org_id)
                rows = await conn.fetch(
                    ROW_SQL + """ WHERE l.org_id = $1 AND ($2 = '' OR l.scope = 'org' OR l.user_id = $2)
                                  ORDER BY l.scope <> 'org', l.scope, l.user_id, l.key_id""", org_id, user_id)
            else:
                await self.require_user(conn, user_id)
                rows = await conn.fetch(
                    ROW_SQL + """ WHERE l.user_id = $1 AND l.org_id IS NULL ORDER BY l.scope, l.key_id""", user_id)
        return [rate_limit_row(r) for r in rows]
