"""Low-balance alerts (migrations/0005_alerts.sql): webhooks, thresholds, the events a crossing
fires, and the worker's side: consuming pool checks, leasing due deliveries, recording attempts."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from ..errors import FailedPrecondition, NotFound
from ..model import AlertDelivery, AlertEvent, AlertThreshold, AlertWebhook, DueAlert
from ..secret_box import SecretBox
from .audit import aim_entry
from .common import Queries

EVENT_COLUMNS = [name for name in AlertEvent.__dataclass_fields__ if name != "deliveries"]


def alert_event(row: asyncpg.Record, deliveries: list[AlertDelivery] | None = None) -> AlertEvent:
    return AlertEvent(**{name: row[name] for name in EVENT_COLUMNS}, deliveries=deliveries or [])


class AlertQueries(Queries):
    MAX_ALERT_THRESHOLDS_PER_ORG = 100  # bounds the work of the commit trigger
    secret_box: SecretBox | None = None  # webhook secrets are stored encrypted (credit_service/secret_box.py)

    def _box(self) -> SecretBox:
        if self.secret_box is None:
            raise RuntimeError("no secret box: set Storage.secret_box before storing or reading webhook secrets")
        return self.secret_box

    async def encrypt_webhook_secrets(self) -> int:
        """Rewrites every webhook secret not yet encrypted under the first key (plain text written before
        encryption, or an older key's); returns how many."""
        box, done = self._box(), 0
        async with self.pool.acquire() as conn:
            for row in await conn.fetch("SELECT org_id, secret FROM alert_webhooks"):
                if not box.current(row["secret"]):
                    done += int(await conn.execute(
                        "UPDATE alert_webhooks SET secret = $3 WHERE org_id = $1 AND secret = $2", row["org_id"],
                        row["secret"], box.encrypt(box.decrypt(row["secret"]))) == "UPDATE 1")
        return done

    async def set_alert_webhook(self, org_id: str, url: str, secret: str) -> AlertWebhook | None:
        """Stores (or with an empty url removes) the org's webhook; returns the row, or None when removed."""
        async with self.writing() as conn:
            await self.require_org(conn, org_id)
            if not url:
                await conn.execute("DELETE FROM alert_webhooks WHERE org_id = $1", org_id)
                return None
            row = await conn.fetchrow(
                """INSERT INTO alert_webhooks (org_id, url, secret) VALUES ($1, $2, $3)
                   ON CONFLICT (org_id) DO UPDATE SET url = $2, secret = $3, updated_at = now()
                   RETURNING *""", org_id, url, self._box().encrypt(secret))
        return AlertWebhook(**{**dict(row), "secret": secret})

    async def get_alert_webhook(self, org_id: str) -> AlertWebhook | None:
        async with self.pool.acquire() as conn:
            await self.require_org(conn, org_id)
            row = await conn.fetchrow("SELECT * FROM alert_webhooks WHERE org_id = $1", org_id)
        return AlertWebhook(**{**dict(row), "secret": self._box().decrypt(row["secret"])}) if row else None

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

    async def create_alert_threshold(self, org_id: str, user_id: str | None, kind: str,
                                     value: int) -> AlertThreshold:
        """Adds a threshold, fired already when remaining is at or below it (no alert for that)."""
        async with self.writing() as conn:
            await self.require_org(conn, org_id)
            await self._lock_org_allocations(conn, org_id)
            count = await conn.fetchval("SELECT count(*) FROM alert_thresholds WHERE org_id = $1", org_id)
            if count >= self.MAX_ALERT_THRESHOLDS_PER_ORG:
                raise FailedPrecondition(
                    f"organization {org_id!r} already has {count} alert thresholds (at most "
                    f"{self.MAX_ALERT_THRESHOLDS_PER_ORG})")
            if user_id is not None:
                await self.require_member(conn, org_id, user_id)
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
            await aim_entry(conn, "alert_threshold", org_id, str(threshold_id))
            await self._rewatch(conn, org_id)
            row = await conn.fetchrow(self._THRESHOLD_SELECT + " WHERE t.org_id = $1 AND t.threshold_id = $2",
                                      org_id, threshold_id)
        return AlertThreshold(**dict(row))

    async def delete_alert_threshold(self, org_id: str, threshold_id: int) -> None:
        async with self.writing() as conn:
            await self._lock_org_allocations(conn, org_id)
            deleted = await conn.execute(
                "DELETE FROM alert_thresholds WHERE org_id = $1 AND threshold_id = $2", org_id, threshold_id)
            if deleted == "DELETE 0":
                raise NotFound(f"alert threshold {threshold_id} of {org_id!r} not found")
            await self._rewatch(conn, org_id)

    async def list_alert_thresholds(self, org_id: str, user_id: str | None) -> list[AlertThreshold]:
        async with self.pool.acquire() as conn:
            await self.require_org(conn, org_id)
            rows = await conn.fetch(
                self._THRESHOLD_SELECT + """ WHERE t.org_id = $1 AND ($2::text IS NULL OR t.user_id = $2)
                                             ORDER BY t.user_id NULLS FIRST, t.threshold_id""", org_id, user_id)
        return [AlertThreshold(**dict(r)) for r in rows]

    async def list_alert_events(self, org_id: str, user_id: str | None, limit: int) -> list[AlertEvent]:
        """Alerts newest first, each with its delivery attempts (oldest first)."""
        async with self.reading() as conn:
            await self.require_org(conn, org_id)
            rows = await conn.fetch(
                """SELECT * FROM alert_events WHERE org_id = $1 AND ($2::text IS NULL OR user_id = $2)
                    ORDER BY created_at DESC, event_id DESC LIMIT $3""", org_id, user_id, limit)
            attempts = await conn.fetch(
                """SELECT * FROM alert_deliveries WHERE org_id = $1 AND event_id = ANY($2::BIGINT[])
                    ORDER BY event_id, attempt""", org_id, [r["event_id"] for r in rows])
        by_event: dict[int, list[AlertDelivery]] = {}
        for attempt in attempts:
            by_event.setdefault(attempt["event_id"], []).append(AlertDelivery(**dict(attempt)))
        return [alert_event(r, by_event.get(r["event_id"])) for r in rows]

    async def process_alert_checks(self, limit: int = 100) -> tuple[int, int]:
        """The worker's half of pool thresholds: consumes queued checks, locks each threshold and
        decides on committed data (fire when armed and at or below, re-arm when above). Returns
        (checks consumed, alerts fired)."""
        fired = 0
        async with self.pool.acquire() as conn, conn.transaction():
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

    async def claim_alert_deliveries(self, limit: int, lease_seconds: float, per_org: int = 0,
                                     busy_orgs: tuple[str, ...] = ()) -> list[DueAlert]:
        """Leases due pending alerts to this worker (other replicas skip them) and counts the attempt: at most
        `limit`, at most `per_org` of one org (0: no cap), none of `busy_orgs` (orgs this worker already
        sends as many of as it may). Alerts of an org without a webhook are marked no_webhook instead."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """UPDATE alert_events e SET status = 'no_webhook', lease_until = NULL
                    WHERE e.status = 'pending' AND e.next_attempt_at <= now()
                      AND NOT EXISTS (SELECT 1 FROM alert_webhooks w WHERE w.org_id = e.org_id)""")
            rows = await conn.fetch(
                """UPDATE alert_events e
                      SET lease_until = now() + make_interval(secs => $2), attempts = e.attempts + 1
                     FROM (SELECT org_id, event_id
                             FROM (SELECT org_id, event_id, next_attempt_at,
                                          row_number() OVER (PARTITION BY org_id ORDER BY next_attempt_at) AS nth
                                     FROM (SELECT org_id, event_id, next_attempt_at FROM alert_events
                                            WHERE status = 'pending' AND next_attempt_at <= now()
                                              AND (lease_until IS NULL OR lease_until < now())
                                              AND org_id <> ALL($4::text[])
                                            ORDER BY next_attempt_at LIMIT $1 * 4
                                              FOR UPDATE SKIP LOCKED) candidates) ranked
                            WHERE $3 = 0 OR nth <= $3
                            ORDER BY next_attempt_at LIMIT $1) due,
                          alert_webhooks w
                    WHERE e.org_id = due.org_id AND e.event_id = due.event_id AND w.org_id = e.org_id
                RETURNING e.*, w.url AS webhook_url, w.secret AS webhook_secret""",
                limit, lease_seconds, per_org, list(busy_orgs))
        box = self._box() if rows else None
        return [DueAlert(alert_event(r), r["webhook_url"], box.readable(r["webhook_secret"])) for r in rows
                if box is not None]

    async def record_alert_delivery(self, org_id: str, event_id: int, attempt: int, url: str,
                                    status_code: int | None, error: str, duration_ms: int, delivered: bool,
                                    retry_in_seconds: float | None) -> None:
        """Records one attempt; the alert becomes delivered, pending again (retry_in_seconds) or failed."""
        async with self.pool.acquire() as conn, conn.transaction():
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

    async def fix_alert_forecast(self, org_id: str, event_id: int, burn_rate_mc_per_day: int,
                                 runs_out_at: datetime | None) -> tuple[int, datetime | None]:
        """Keeps the first forecast computed for an alert (a replica that computed one concurrently gets
        the stored one back): (burn rate, run-out time) as stored."""
        row = await self.pool.fetchrow(
            """UPDATE alert_events
                  SET burn_rate_mc_per_day = coalesce(burn_rate_mc_per_day, $3),
                      runs_out_at = CASE WHEN burn_rate_mc_per_day IS NULL THEN $4 ELSE runs_out_at END
                WHERE org_id = $1 AND event_id = $2
            RETURNING burn_rate_mc_per_day, runs_out_at""", org_id, event_id, burn_rate_mc_per_day, runs_out_at)
        return row["burn_rate_mc_per_day"], row["runs_out_at"]

    async def next_alert_due_seconds(self) -> float | None:
        """Seconds until the next pending alert is due (0 when overdue), or None when none is pending."""
        seconds = await self.pool.fetchval(
            """SELECT extract(epoch FROM min(greatest(next_attempt_at, coalesce(lease_until, next_attempt_at)))
                                         - now())::float8
                 FROM alert_events WHERE status = 'pending'""")
        return None if seconds is None else max(seconds, 0.0)
