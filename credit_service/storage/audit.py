"""The audit log (migration 0018): one record per administrative action, appended in the transaction of
the change it records, and the queries that read it back.

`Queries.writing()` (common.py) calls `open_entry` when its transaction starts and `seal_entry` before
it commits; a part of storage that learns the target only inside the transaction (a new key's id, the
purchase a payment event is about) names it with `aim_entry` before changing it, which reads `before`
then. Each target kind has one snapshot query of the target's administrative fields: never a secret, a
digest, or an account's used/held.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from .. import audit
from ..model import AuditRecord
from .common import Queries

# kind -> (SQL, whether it takes the org as $1 before the target id)
SNAPSHOTS: dict[str, tuple[str, bool]] = {
    "user": ("""SELECT jsonb_build_object('user_id', u.user_id, 'display_name', u.display_name, 'email', u.email,
                                          'individual_limit_mc', b.limit_mc)
                  FROM users u LEFT JOIN individual_balances b USING (user_id) WHERE u.user_id = $1""", False),
    "organization": ("""SELECT jsonb_build_object('org_id', o.org_id, 'name', o.name, 'pool_total_mc', p.total_mc,
                                                  'pool_allocated_mc', p.allocated_mc)
                          FROM organizations o JOIN org_pools p USING (org_id) WHERE o.org_id = $1""", False),
    "member": ("""SELECT jsonb_build_object('org_id', m.org_id, 'user_id', m.user_id, 'role', m.role,
                                            'is_default', m.is_default, 'allocation_mc', a.limit_mc)
                    FROM org_members m LEFT JOIN allocations a USING (org_id, user_id)
                   WHERE m.org_id = $1 AND m.user_id = $2""", True),
    "api_key": ("""SELECT to_jsonb(k) - 'secret_hash' - 'last_used_at' FROM api_keys k WHERE k.key_id = $1""",
                False),
    "alert_webhook": ("""SELECT jsonb_build_object('url', w.url, 'secret_set', w.secret <> '',
                                                   'updated_at', w.updated_at)
                           FROM alert_webhooks w WHERE w.org_id = $1""", False),
    "alert_threshold": ("""SELECT to_jsonb(t) - 'state' - 'changed_at' FROM alert_thresholds t
                            WHERE t.org_id = $1 AND t.threshold_id::text = $2""", True),
    "purchase": ("SELECT to_jsonb(p) FROM purchases p WHERE p.org_id = $1 AND p.session_id = $2", True),
    "rate_limit": ("""SELECT jsonb_build_object('scope', l.scope, 'org_id', l.org_id, 'user_id', l.user_id,
                                                'key_id', l.key_id, 'rpm', l.rpm, 'tpm', l.tpm,
                                                'max_parallel', l.max_parallel,
                                                'credits_per_day_mc', l.credits_per_day_mc,
                                                'credits_per_month_mc', l.credits_per_month_mc)
                        FROM rate_limits l WHERE l.scope_key = $1""", False),
    "platform_credential": ("""SELECT jsonb_build_object(
                                   'name', c.name, 'individuals', c.individuals, 'roles', c.roles,
                                   'org_ids', (SELECT coalesce(jsonb_agg(o.org_id ORDER BY o.org_id), '[]')
                                                 FROM platform_credential_orgs o WHERE o.name = c.name),
                                   'created_by', c.created_by, 'rotated_at', c.rotated_at,
                                   'revoked_at', c.revoked_at,
                                   'secrets_in_use', (SELECT count(*) FROM platform_secrets s
                                                       WHERE s.name = c.name AND (s.valid_until IS NULL
                                                                                  OR s.valid_until > now())))
                                 FROM platform_credentials c WHERE c.name = $1""", False),
}

INSERT_SQL = """
    INSERT INTO audit_log (actor, actor_kind, on_behalf_of, action, target_kind, org_id, target_id, before, after,
                           request_id, source, forwarded_for)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"""

# The newest first, each filter optional ('' / NULL: any), before_id pages back.
# ($6::bigint: compared with the literal 0 alone, PostgreSQL would type it int4 and refuse ids past 2**31.)
LIST_SQL = """
    SELECT * FROM audit_log
     WHERE ($1 = '' OR org_id = $1)
       AND ($2 = '' OR actor = $2 OR on_behalf_of = $2)
       AND ($3 = '' OR action = $3)
       AND ($4::timestamptz IS NULL OR at >= $4)
       AND ($5::timestamptz IS NULL OR at < $5)
       AND ($6::bigint = 0 OR audit_id < $6)
     ORDER BY audit_id DESC
     LIMIT $7"""


async def snapshot(conn: asyncpg.Connection, entry: audit.Entry) -> Any:
    """The target's administrative fields now (None when it does not exist, or has no target)."""
    if not entry.target_id:
        return None
    sql, with_org = SNAPSHOTS[entry.target_kind]
    args = (entry.org_id or "", entry.target_id) if with_org else (entry.target_id,)
    return await conn.fetchval(sql, *args)


async def open_entry(conn: asyncpg.Connection, entry: audit.Entry) -> None:
    """At the start of the action's transaction: `before`, when the target is known."""
    if entry.target_id:
        entry.before = await snapshot(conn, entry)
        entry.opened = True


async def aim_entry(conn: asyncpg.Connection, kind: str, org_id: str | None, target_id: str) -> None:
    """Names the target inside the transaction, before changing it (so `before` is read now)."""
    entry = audit.current.get()
    if entry is None or entry.written:
        return
    entry.aim(kind, org_id, target_id)
    entry.before = await snapshot(conn, entry)
    entry.opened = True


async def seal_entry(conn: asyncpg.Connection, entry: audit.Entry) -> None:
    """Before the action's transaction commits: `after`, and the record."""
    if not entry.opened:
        entry.before = None
    entry.after = await snapshot(conn, entry)
    await insert(conn, entry)
    entry.written = True


async def insert(conn: asyncpg.Connection | asyncpg.Pool, entry: audit.Entry) -> None:
    await conn.execute(INSERT_SQL, entry.actor, entry.actor_kind, entry.on_behalf_of, entry.action,
                       entry.target_kind, entry.org_id, entry.target_id, entry.before, entry.after,
                       entry.request_id, entry.source, entry.forwarded_for)


def audit_record(row: asyncpg.Record) -> AuditRecord:
    return AuditRecord(row["audit_id"], row["at"], row["actor"], row["actor_kind"], row["on_behalf_of"],
                       row["action"], row["target_kind"], row["org_id"], row["target_id"], row["before"],
                       row["after"], row["request_id"], row["source"], row["forwarded_for"])


class AuditQueries(Queries):
    async def record_audit_alone(self, entry: audit.Entry) -> None:
        """The record of an action that wrote nothing (a replay): before = after = the target now."""
        async with self.pool.acquire() as conn, conn.transaction():
            entry.before = entry.after = await snapshot(conn, entry)
            await insert(conn, entry)
        entry.written = True

    async def list_audit(self, org_id: str, actor: str, action: str, start: datetime | None, end: datetime | None,
                         before_id: int, limit: int) -> list[AuditRecord]:
        async with self.reading() as conn:
            rows = await conn.fetch(LIST_SQL, org_id, actor, action, start, end, before_id, limit)
        return [audit_record(r) for r in rows]
