"""The invariants of docs/contract.md, checked against the database itself."""

from __future__ import annotations

import asyncpg

CHECKS = {
    "allocation cache equals its ledger": """
        SELECT a.org_id, a.user_id FROM allocations a
        LEFT JOIN (SELECT org_id, user_id, sum(delta_limit_mc) l, sum(delta_used_mc) u, sum(delta_held_mc) h
                     FROM ledger_entries WHERE account = 'allocation' GROUP BY 1, 2) e
               USING (org_id, user_id)
        WHERE (a.limit_mc, a.used_mc, a.held_mc) IS DISTINCT FROM
              (coalesce(e.l, 0), coalesce(e.u, 0), coalesce(e.h, 0))""",
    "individual cache equals its ledger": """
        SELECT b.user_id FROM individual_balances b
        LEFT JOIN (SELECT user_id, sum(delta_limit_mc) l, sum(delta_used_mc) u, sum(delta_held_mc) h
                     FROM ledger_entries WHERE account = 'individual' GROUP BY 1) e USING (user_id)
        WHERE (b.limit_mc, b.used_mc, b.held_mc) IS DISTINCT FROM
              (coalesce(e.l, 0), coalesce(e.u, 0), coalesce(e.h, 0))""",
    "pool total equals its ledger (top-ups less refunds)": """
        SELECT p.org_id FROM org_pools p
        LEFT JOIN (SELECT org_id, sum(delta_limit_mc) l FROM ledger_entries
                    WHERE account = 'pool' GROUP BY 1) e USING (org_id)
        WHERE p.total_mc <> coalesce(e.l, 0)""",
    "pool total equals its top-up rows less the credits refunds took back": """
        SELECT p.org_id FROM org_pools p
        LEFT JOIN (SELECT org_id, sum(amount_mc) s FROM pool_top_ups GROUP BY 1) t USING (org_id)
        LEFT JOIN (SELECT org_id, sum(refunded_mc) s FROM purchases GROUP BY 1) r USING (org_id)
        WHERE p.total_mc <> coalesce(t.s, 0) - coalesce(r.s, 0)""",
    "every pool adjustment is a refund's, of the credits its purchases say were taken back": """
        SELECT p.org_id FROM org_pools p
        LEFT JOIN (SELECT org_id, sum(delta_limit_mc) l FROM ledger_entries
                    WHERE account = 'pool' AND kind = 'adjustment' GROUP BY 1) e USING (org_id)
        LEFT JOIN (SELECT org_id, sum(refunded_mc) s FROM purchases GROUP BY 1) r USING (org_id)
        WHERE coalesce(e.l, 0) <> -coalesce(r.s, 0)""",
    "pool allocated equals the sum of allocations": """
        SELECT p.org_id FROM org_pools p
        LEFT JOIN (SELECT org_id, sum(limit_mc) s FROM allocations GROUP BY 1) a USING (org_id)
        WHERE p.allocated_mc <> coalesce(a.s, 0)""",
    # A refund takes its credits back even when they were allocated or spent: then, and only then, the
    # allocations may exceed the pool's total, by exactly overdrawn_mc, which is at most what the org's
    # purchases flagged overdrawn were refunded. Every other org: allocations within the total.
    "sum of allocations within the pool, unless a flagged refund overdrew it": """
        SELECT org_id, total_mc, allocated_mc, overdrawn_mc FROM org_pools
        WHERE total_mc < 0 OR allocated_mc > total_mc + overdrawn_mc""",
    "overdrawn is exactly the allocations above the pool's total": """
        SELECT org_id, total_mc, allocated_mc, overdrawn_mc FROM org_pools
        WHERE overdrawn_mc <> greatest(allocated_mc - total_mc, 0)""",
    "a pool is overdrawn only by refunds flagged overdrawn, and by at most what they took back": """
        SELECT p.org_id, p.overdrawn_mc, r.s FROM org_pools p
        LEFT JOIN (SELECT org_id, sum(refunded_mc) s FROM purchases WHERE overdrawn GROUP BY 1) r USING (org_id)
        WHERE p.overdrawn_mc > coalesce(r.s, 0)""",
    "every credit-creating row names who created it": """
        SELECT 'top-up' k, org_id, purchase_reference FROM pool_top_ups WHERE created_by = ''
        UNION ALL SELECT 'grant', user_id, reference FROM individual_grants WHERE created_by = ''""",
    "a payment top-up is exactly its paid purchase's credits, and a paid purchase has its top-up": """
        SELECT t.org_id, t.purchase_reference FROM pool_top_ups t
        LEFT JOIN purchases p ON p.org_id = t.org_id AND t.purchase_reference = 'stripe:' || p.session_id
        WHERE (t.source = 'payment') <> (p.session_id IS NOT NULL)
           OR (t.source = 'payment' AND (p.status NOT IN ('paid', 'partially_refunded', 'refunded')
                                         OR p.credits_mc <> t.amount_mc))
        UNION ALL
        SELECT p.org_id, p.session_id FROM purchases p
        WHERE p.status IN ('paid', 'partially_refunded', 'refunded')
          AND NOT EXISTS (SELECT 1 FROM pool_top_ups t WHERE t.org_id = p.org_id AND t.source = 'payment'
                                                        AND t.purchase_reference = 'stripe:' || p.session_id)""",
    "held equals open reservations": """
        SELECT x.* FROM (
            SELECT 'allocation' k, org_id, user_id, held_mc FROM allocations
            UNION ALL SELECT 'individual', NULL, user_id, held_mc FROM individual_balances) x
        LEFT JOIN (SELECT funding_kind, org_id, user_id, sum(amount_mc) s FROM reservations
                    WHERE status = 'held' GROUP BY 1, 2, 3) r
               ON r.user_id = x.user_id AND r.org_id IS NOT DISTINCT FROM x.org_id
              AND r.funding_kind = CASE WHEN x.k = 'allocation' THEN 'org' ELSE 'individual' END
        WHERE x.held_mc <> coalesce(r.s, 0)""",
    "used + held within limit unless flagged": """
        SELECT x.* FROM (
            SELECT 'org' k, org_id, user_id, limit_mc, used_mc, held_mc FROM allocations
            UNION ALL SELECT 'individual', NULL, user_id, limit_mc, used_mc, held_mc FROM individual_balances) x
        WHERE x.used_mc + x.held_mc > x.limit_mc
          AND NOT EXISTS (SELECT 1 FROM usage_attribution u
                           WHERE u.user_id = x.user_id AND u.org_id IS NOT DISTINCT FROM x.org_id
                             AND u.funding_kind = x.k AND (u.overrun OR u.late))""",
    "every committed reservation has exactly one attribution row": """
        SELECT r.reservation_id FROM reservations r
        LEFT JOIN usage_attribution u USING (reservation_id)
        WHERE r.status = 'committed' AND (u.reservation_id IS NULL OR u.credits_used <> r.charged_mc)""",
    "no attribution row without a committed reservation": """
        SELECT u.reservation_id FROM usage_attribution u
        LEFT JOIN reservations r USING (reservation_id)
        WHERE r.status IS DISTINCT FROM 'committed'""",
    "used equals the sum of charges": """
        SELECT x.* FROM (
            SELECT 'org' k, org_id, user_id, used_mc FROM allocations
            UNION ALL SELECT 'individual', NULL, user_id, used_mc FROM individual_balances) x
        LEFT JOIN (SELECT funding_kind, org_id, user_id, sum(credits_used) s FROM usage_attribution
                    GROUP BY 1, 2, 3) u
               ON u.user_id = x.user_id AND u.org_id IS NOT DISTINCT FROM x.org_id AND u.funding_kind = x.k
        WHERE x.used_mc <> coalesce(u.s, 0)""",
    "each rate limit's open holds are the held reservations counted against it": """
        SELECT l.limit_id, l.open_holds, count(r.reservation_id) AS held FROM rate_limits l
        LEFT JOIN reservations r ON r.status = 'held' AND l.limit_id = ANY(r.limit_ids)
        GROUP BY l.limit_id HAVING l.open_holds <> count(r.reservation_id)""",
}


async def violations(conn: asyncpg.Connection) -> dict[str, list]:
    found = {}
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        for name, sql in CHECKS.items():
            rows = await conn.fetch(sql)
            if rows:
                found[name] = [dict(r) for r in rows[:5]]
    return found


async def assert_invariants(conn: asyncpg.Connection) -> None:
    found = await violations(conn)
    assert not found, f"invariants violated: {found}"


TABLES = ("users", "organizations", "org_members", "org_pools", "pool_top_ups", "allocations",
          "individual_balances", "individual_grants", "reservations", "usage_attribution",
          "ledger_entries", "api_keys", "purchases", "payment_events", "rate_limits", "audit_log",
          "platform_credentials", "alert_webhooks", "alert_thresholds")


async def row_counts(conn: asyncpg.Connection, ignore_callers: tuple[str, ...] = ()) -> dict[str, int]:
    """Rows of every table, for "a refused call wrote nothing". Ledger entries of the expiry sweeper are left
    out: it releases holds of other tests at any moment (their TTLs end), and no call writes one. So are the
    reservations, usage rows and ledger entries of `ignore_callers` (the REST services earlier tests left
    running, which may still settle their calls: a release after a moderation, an outbox's late commit),
    for a test whose calls never act on theirs."""
    counts = {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}  # fixed table names
    counts["ledger_entries"] -= await conn.fetchval("SELECT count(*) FROM ledger_entries WHERE kind = 'expiry'")
    if ignore_callers:
        others = list(ignore_callers)
        counts["reservations"] -= await conn.fetchval(
            "SELECT count(*) FROM reservations WHERE caller = ANY($1::text[])", others)
        counts["usage_attribution"] -= await conn.fetchval(
            "SELECT count(*) FROM usage_attribution WHERE caller = ANY($1::text[])", others)
        counts["ledger_entries"] -= await conn.fetchval(
            """SELECT count(*) FROM ledger_entries l JOIN reservations r USING (reservation_id)
                WHERE l.kind <> 'expiry' AND r.caller = ANY($1::text[])""", others)
    return counts
