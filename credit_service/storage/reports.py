"""Statements and forecasts, read from the ledger (credit_service/reports.py has the rules).

A balance is credits not yet used: for a pool, its total (the pool's ledger: top-ups less refunds) minus
what all its allocations used; for an allocation or an individual balance, its limit minus its used. Every
figure is a sum of ledger entries, the same entries the account rows cache (tests/invariants.py), so the
closing balance of a statement ending now is the account rows' figure, and usage comes from the charge
entries rather than from usage_attribution: one source for opening, lines, usage and closing, so that
closing − opening is exactly the sum of what the statement lists. Each statement runs in one
read-only REPEATABLE READ transaction (one snapshot). The SQL of each scope is fixed text picked by the
scope's name, never built from input.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from ..errors import NotFound
from ..model import Account, Statement, StatementLine, StatementUsage, WindowUsage
from .common import Queries

# Which ledger entries make up each kind of account; parameters from $3 on are the account's ids.
SCOPE_FILTER = {
    "pool": "e.org_id = $3 AND e.account IN ('pool', 'allocation')",
    "allocation": "e.account = 'allocation' AND e.org_id = $3 AND e.user_id = $4",
    "individual": "e.account = 'individual' AND e.user_id = $3",
}
IN_PERIOD = "e.created_at >= $1 AND ($2::timestamptz IS NULL OR e.created_at < $2)"
CREDITS_IN_KINDS = "('top_up', 'grant')"

SUMMARY_SQL = {scope: f"""
    SELECT coalesce(sum(limit_d - used_d) FILTER (WHERE created_at < $1), 0)::BIGINT AS opening_mc,
           coalesce(sum(limit_d - used_d) FILTER (WHERE $2::timestamptz IS NULL OR created_at < $2),
                    0)::BIGINT AS closing_mc,
           coalesce(sum(limit_d) FILTER (WHERE in_period AND kind IN {CREDITS_IN_KINDS}), 0)::BIGINT AS credits_in_mc,
           coalesce(sum(limit_d) FILTER (WHERE in_period AND kind = 'allocation'), 0)::BIGINT AS allocation_changes_mc,
           coalesce(sum(limit_d) FILTER (WHERE in_period AND kind NOT IN {CREDITS_IN_KINDS} AND kind <> 'allocation'),
                    0)::BIGINT AS adjustments_mc,
           coalesce(sum(used_d) FILTER (WHERE in_period), 0)::BIGINT AS usage_mc,
           now() AS now
      FROM (SELECT e.kind, e.created_at, {IN_PERIOD} AS in_period, e.delta_used_mc AS used_d,
                   CASE WHEN e.account = '{scope}' THEN e.delta_limit_mc ELSE 0 END AS limit_d
              FROM ledger_entries e WHERE {where}) x""" for scope, where in SCOPE_FILTER.items()}

# The entries that moved the limit (the pool's total), with the top-up or grant row each one wrote.
LINES_SQL = {scope: f"""
    SELECT e.created_at, e.kind, e.delta_limit_mc, e.note, t.source, t.created_by AS top_up_by,
           t.purchase_reference, g.created_by AS grant_by, g.reference AS grant_reference
      FROM ledger_entries e
      LEFT JOIN LATERAL (SELECT source, created_by, purchase_reference FROM pool_top_ups t
                          WHERE t.org_id = e.org_id AND t.created_at = e.created_at AND t.amount_mc = e.delta_limit_mc
                          ORDER BY t.top_up_id LIMIT 1) t ON e.kind = 'top_up'
      LEFT JOIN LATERAL (SELECT created_by, reference FROM individual_grants g
                          WHERE g.user_id = e.user_id AND g.created_at = e.created_at AND g.amount_mc = e.delta_limit_mc
                          ORDER BY g.grant_id LIMIT 1) g ON e.kind = 'grant'
     WHERE {where} AND e.account = '{scope}' AND e.delta_limit_mc <> 0 AND {IN_PERIOD}
     ORDER BY e.created_at, e.entry_id LIMIT ${4 + where.count("$4")}"""
    for scope, where in SCOPE_FILTER.items()}

USAGE_KEYS = {"model": "coalesce(r.service_name, '')", "member": "e.user_id"}
USAGE_SQL = {(scope, group): f"""
    SELECT {key} AS key, count(*) FILTER (WHERE e.kind = 'charge') AS requests,
           sum(e.delta_used_mc)::BIGINT AS credits_used_mc
      FROM ledger_entries e LEFT JOIN reservations r ON r.reservation_id = e.reservation_id
     WHERE {where} AND (e.kind = 'charge' OR e.delta_used_mc <> 0) AND {IN_PERIOD}
     GROUP BY 1 ORDER BY 3 DESC, 1 LIMIT ${4 + where.count("$4")}"""
    for scope, where in SCOPE_FILTER.items() for group, key in USAGE_KEYS.items()}

WINDOW = "created_at > $2 AND created_at <= $3"
POOL_NOW_SQL = f"""
    SELECT (p.total_mc - coalesce((SELECT sum(used_mc) FROM allocations a WHERE a.org_id = p.org_id), 0))::BIGINT
               AS remaining,
           (SELECT coalesce(sum(delta_used_mc), 0) FROM ledger_entries
             WHERE account = 'allocation' AND org_id = p.org_id AND {WINDOW})::BIGINT AS used
      FROM org_pools p WHERE p.org_id = $1"""
MEMBERS_NOW_SQL = f"""
    SELECT m.user_id, coalesce(a.limit_mc - a.used_mc, 0) AS remaining, coalesce(w.used, 0)::BIGINT AS used
      FROM org_members m
      LEFT JOIN allocations a ON a.org_id = m.org_id AND a.user_id = m.user_id
      LEFT JOIN (SELECT user_id, sum(delta_used_mc) AS used FROM ledger_entries
                  WHERE account = 'allocation' AND org_id = $1 AND {WINDOW} GROUP BY 1) w ON w.user_id = m.user_id
     WHERE m.org_id = $1 ORDER BY m.join_seq"""
INDIVIDUAL_NOW_SQL = f"""
    SELECT coalesce((SELECT limit_mc - used_mc FROM individual_balances WHERE user_id = $1), 0) AS remaining,
           (SELECT coalesce(sum(delta_used_mc), 0) FROM ledger_entries
             WHERE account = 'individual' AND user_id = $1 AND {WINDOW})::BIGINT AS used"""
ALLOCATION_WINDOW_SQL = f"""
    SELECT coalesce(sum(delta_used_mc), 0)::BIGINT FROM ledger_entries
     WHERE account = 'allocation' AND org_id = $1 AND user_id = $4 AND {WINDOW}"""
POOL_WINDOW_SQL = f"""
    SELECT coalesce(sum(delta_used_mc), 0)::BIGINT FROM ledger_entries
     WHERE account = 'allocation' AND org_id = $1 AND {WINDOW}"""


def ids(account: Account) -> tuple[str, ...]:
    """The account's parameters, in the order of its SCOPE_FILTER ($3, $4)."""
    return tuple(x for x in (account.org_id, account.user_id) if x is not None)


def statement_line(row: asyncpg.Record) -> StatementLine:
    """A ledger entry as a statement line, named after where its credits came from."""
    kind, source, reference = row["kind"], "", ""
    if kind == "top_up" and row["source"] == "payment":
        reference = row["purchase_reference"]
        kind, source = "purchase", "payment " + reference.removeprefix("stripe:")
    elif kind == "top_up" and row["source"] is not None:
        source, reference = f"operator {row['top_up_by']}", row["purchase_reference"]
    elif kind == "grant" and row["grant_by"] is not None:
        source, reference = f"operator {row['grant_by']}", row["grant_reference"] or ""
    elif kind == "adjustment" and row["note"].startswith("refund"):
        kind = "refund"
    elif kind == "allocation":
        source = row["note"].removeprefix("set by ")
    return StatementLine(row["created_at"], kind, row["delta_limit_mc"], source, reference, row["note"])


class ReportQueries(Queries):
    async def require_account(self, conn: asyncpg.Connection, account: Account) -> None:
        """NotFound for an unknown org or user, or a user who neither is nor was a member with an allocation."""
        if account.org_id is not None:
            await self.require_org(conn, account.org_id)
        if account.user_id is not None:
            await self.require_user(conn, account.user_id)
        if account.scope == "allocation" and await conn.fetchval(
                """SELECT 1 FROM org_members WHERE org_id = $1 AND user_id = $2
                   UNION ALL SELECT 1 FROM allocations WHERE org_id = $1 AND user_id = $2 LIMIT 1""",
                account.org_id, account.user_id) is None:
            raise NotFound(f"user {account.user_id!r} has no allocation in {account.org_id!r}")

    async def statement(self, account: Account, start: datetime, end: datetime | None, limit: int) -> Statement:
        """The account over [start, end) (end None: up to now, every entry in the snapshot), lines capped at
        `limit` each kind, sums complete."""
        scope, args = account.scope, (start, end, *ids(account))
        async with self.reading() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            await self.require_account(conn, account)
            s = await conn.fetchrow(SUMMARY_SQL[scope], *args)
            lines = [statement_line(r) for r in await conn.fetch(LINES_SQL[scope], *args, 3 * limit)]
            by_model = await conn.fetch(USAGE_SQL[scope, "model"], *args, limit)
            by_member = await conn.fetch(USAGE_SQL[scope, "member"], *args, limit) if scope == "pool" else []
        credits_in = [x for x in lines if x.kind in ("purchase", "top_up", "grant")]
        changes = [x for x in lines if x.kind == "allocation"]
        adjustments = [x for x in lines if x.kind not in ("purchase", "top_up", "grant", "allocation")]
        return Statement(account, start, end or s["now"], s["opening_mc"], s["closing_mc"], s["credits_in_mc"],
                         s["adjustments_mc"], s["allocation_changes_mc"], s["usage_mc"], credits_in[:limit],
                         adjustments[:limit], changes[:limit], [StatementUsage(**dict(r)) for r in by_model],
                         [StatementUsage(**dict(r)) for r in by_member])

    async def window_usage(self, account: Account, window_start_days: int,
                           ) -> tuple[datetime, WindowUsage, list[WindowUsage]]:
        """(now, the pool or individual balance, each member's allocation): remaining now and usage charged in
        (now − window_start_days, now]."""
        async with self.reading() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            await self.require_account(conn, account)
            now = await conn.fetchval("SELECT now()")
            start = await conn.fetchval("SELECT $1::timestamptz - make_interval(days => $2)", now, window_start_days)
            if account.org_id is None:
                row = await conn.fetchrow(INDIVIDUAL_NOW_SQL, account.user_id, start, now)
                return now, WindowUsage(account.user_id, row["remaining"], row["used"]), []
            row = await conn.fetchrow(POOL_NOW_SQL, account.org_id, start, now)
            members = await conn.fetch(MEMBERS_NOW_SQL, account.org_id, start, now)
        return (now, WindowUsage(None, row["remaining"], row["used"]),
                [WindowUsage(m["user_id"], m["remaining"], m["used"]) for m in members])

    async def usage_between(self, org_id: str, user_id: str | None, start: datetime, end: datetime) -> int:
        """Usage charged to a pool (user_id None) or an allocation in (start, end]."""
        if user_id is None:
            return await self.pool.fetchval(POOL_WINDOW_SQL, org_id, start, end)
        return await self.pool.fetchval(ALLOCATION_WINDOW_SQL, org_id, start, end, user_id)
