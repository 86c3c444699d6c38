"""Purchases through Stripe Checkout: the pending checkout, the paid session that tops up its pool exactly
once, the expired session, refunds that take credits back, and the list of an org's purchases.

Every write locks the org's pool row first (the order every writer of the pool uses), then the purchase.
Exactly once, however Stripe delivers: a paid session moves its purchase from pending (or no row) to paid
in the transaction that tops up the pool under purchase reference 'stripe:<session id>' and records the
event id in payment_events; a second delivery, or the twin event of the same payment, finds the purchase
paid and writes nothing. Refunds are cumulative (Stripe's amount_refunded): only a larger figure than the
one recorded takes anything back.
"""

from __future__ import annotations

import asyncpg

from ..errors import AlreadyExists
from ..model import PaidSession, PaymentOutcome, Purchase
from .admin import AdminQueries
from .audit import aim_entry
from .common import Queries

PURCHASE_COLUMNS = """org_id, session_id, status, credits_mc, amount_minor, currency, refunded_mc, overdrawn,
                      created_by, created_at, paid_at, payment_intent, refunded_minor"""


def purchase_row(row: asyncpg.Record) -> Purchase:
    return Purchase(row["org_id"], row["session_id"], row["status"], row["credits_mc"], row["amount_minor"],
                    row["currency"], row["refunded_mc"], row["overdrawn"], row["created_by"], row["created_at"],
                    row["paid_at"], row["payment_intent"], row["refunded_minor"])


def top_up_reference(session_id: str) -> str:
    """The pool top-up of a paid session: one per session, whoever delivers it."""
    return f"stripe:{session_id}"


class PaymentQueries(Queries):
    async def record_checkout(self, org_id: str, session_id: str, credits_mc: int, amount_minor: int,
                              currency: str, created_by: str) -> Purchase:
        """A pending purchase, once per session id: the same checkout again returns the row as it stands;
        the session id with another org, amount or currency is AlreadyExists."""
        async with self.writing() as conn:
            await self.require_org(conn, org_id)
            row = await conn.fetchrow(
                f"""INSERT INTO purchases (org_id, session_id, status, credits_mc, amount_minor, currency, created_by)
                    VALUES ($1, $2, 'pending', $3, $4, $5, $6)
                    ON CONFLICT (session_id) DO NOTHING RETURNING {PURCHASE_COLUMNS}""",
                org_id, session_id, credits_mc, amount_minor, currency, created_by)
            if row is None:
                row = await conn.fetchrow(f"SELECT {PURCHASE_COLUMNS} FROM purchases WHERE session_id = $1",
                                          session_id)
                if (row["org_id"], row["amount_minor"], row["currency"]) != (org_id, amount_minor, currency):
                    raise AlreadyExists(f"checkout session {session_id!r} was already recorded with another "
                                        "org, amount or currency")
        return purchase_row(row)

    async def list_purchases(self, org_id: str, limit: int) -> list[Purchase]:
        async with self.reading() as conn:
            await self.require_org(conn, org_id)
            rows = await conn.fetch(
                f"""SELECT {PURCHASE_COLUMNS} FROM purchases WHERE org_id = $1
                     ORDER BY created_at DESC, session_id LIMIT $2""", org_id, limit)
        return [purchase_row(r) for r in rows]

    async def org_exists(self, org_id: str) -> bool:
        return await self.pool.fetchval("SELECT 1 FROM org_pools WHERE org_id = $1", org_id) is not None

    @staticmethod
    async def _record_event(conn: asyncpg.Connection, event_id: str, event_type: str, outcome: str,
                            session_id: str | None) -> None:
        """Records an event that changed something (the change itself is guarded by the purchase's state)."""
        await conn.execute(
            """INSERT INTO payment_events (event_id, event_type, outcome, session_id) VALUES ($1, $2, $3, $4)
               ON CONFLICT (event_id) DO NOTHING""", event_id, event_type, outcome, session_id)

    async def apply_paid_session(self, event_id: str, event_type: str, paid: PaidSession) -> PaymentOutcome:
        """Credits a paid session's org once: purchase pending (or absent) -> paid, the pool topped up, the
        event recorded, in one transaction. Anything already paid answers already_applied, writing nothing."""
        async with self.writing() as conn:
            await self.require_org(conn, paid.org_id, lock=True)
            await aim_entry(conn, "purchase", paid.org_id, paid.session_id)
            row = await conn.fetchrow(
                f"""INSERT INTO purchases AS p (org_id, session_id, status, credits_mc, amount_minor, currency,
                                                payment_intent, created_by, paid_at)
                    VALUES ($1, $2, 'paid', $3, $4, $5, $6, $7, now())
                    ON CONFLICT (session_id) DO UPDATE
                       SET status = 'paid', credits_mc = EXCLUDED.credits_mc, amount_minor = EXCLUDED.amount_minor,
                           currency = EXCLUDED.currency, payment_intent = EXCLUDED.payment_intent, paid_at = now()
                     WHERE p.status IN ('pending', 'expired') AND p.org_id = EXCLUDED.org_id
                    RETURNING {PURCHASE_COLUMNS}""",
                paid.org_id, paid.session_id, paid.credits_mc, paid.amount_minor, paid.currency,
                paid.payment_intent, paid.created_by)
            if row is None:  # paid already (a redelivery, or the twin event of the same payment)
                return await self._unchanged(conn, event_id, event_type, paid.session_id, paid.org_id)
            await self._record_event(conn, event_id, event_type, "credited", paid.session_id)
            await AdminQueries.add_to_pool(
                conn, paid.org_id, paid.credits_mc, top_up_reference(paid.session_id),
                str(paid.amount_minor), paid.currency, "payment", paid.payment_intent or paid.session_id,
                f"payment {top_up_reference(paid.session_id)} ({paid.payment_intent or 'no payment intent'})")
            return PaymentOutcome(event_id, event_type, "credited", purchase_row(row))

    async def _unchanged(self, conn: asyncpg.Connection, event_id: str, event_type: str, session_id: str,
                         org_id: str) -> PaymentOutcome:
        """A paid session that changes nothing: already_applied when its purchase is paid for this org, else
        ignored (the session id belongs to another org's checkout)."""
        row = await conn.fetchrow(f"SELECT {PURCHASE_COLUMNS} FROM purchases WHERE session_id = $1", session_id)
        purchase = purchase_row(row) if row is not None else None
        outcome = "already_applied" if purchase is not None and purchase.org_id == org_id else "ignored"
        return PaymentOutcome(event_id, event_type, outcome, purchase if outcome == "already_applied" else None)

    async def expire_session(self, event_id: str, event_type: str, session_id: str) -> PaymentOutcome:
        """A pending purchase whose session expired unpaid; any other state is left as it is."""
        async with self.writing() as conn:
            await aim_entry(conn, "purchase", await conn.fetchval(
                "SELECT org_id FROM purchases WHERE session_id = $1", session_id), session_id)
            row = await conn.fetchrow(
                f"""UPDATE purchases SET status = 'expired' WHERE session_id = $1 AND status = 'pending'
                    RETURNING {PURCHASE_COLUMNS}""", session_id)
            if row is None:
                current = await conn.fetchrow(f"SELECT {PURCHASE_COLUMNS} FROM purchases WHERE session_id = $1",
                                              session_id)
                return PaymentOutcome(event_id, event_type, "ignored" if current is None else "already_applied",
                                      purchase_row(current) if current is not None else None)
            await self._record_event(conn, event_id, event_type, "expired", session_id)
            return PaymentOutcome(event_id, event_type, "expired", purchase_row(row))

    async def apply_refund(self, event_id: str, event_type: str, payment_intent: str,
                           refunded_minor: int) -> PaymentOutcome:
        """Takes back the refunded share of a paid purchase's credits (rounded down), as one negative pool
        adjustment for what the cumulative `refunded_minor` adds to the last one recorded. When the pool's
        unallocated credits do not cover it the pool goes below its allocations by that much (overdrawn_mc)
        and the purchase is flagged overdrawn."""
        org_id = await self.pool.fetchval("SELECT org_id FROM purchases WHERE payment_intent = $1", payment_intent)
        if org_id is None:
            return PaymentOutcome(event_id, event_type, "ignored")
        async with self.writing() as conn:
            pool = await self.require_org(conn, org_id, lock=True)
            row = await conn.fetchrow(f"SELECT {PURCHASE_COLUMNS} FROM purchases WHERE payment_intent = $1 "
                                      "FOR UPDATE", payment_intent)
            purchase = purchase_row(row)
            await aim_entry(conn, "purchase", org_id, purchase.session_id)
            refunded = min(refunded_minor, purchase.amount_minor)
            if purchase.status not in ("paid", "partially_refunded") or refunded <= purchase.refunded_minor:
                return PaymentOutcome(event_id, event_type, "already_applied", purchase)
            taken_mc = purchase.credits_mc * refunded // purchase.amount_minor - purchase.refunded_mc
            overdrawn = taken_mc > pool["total_mc"] - pool["allocated_mc"]
            await self._record_event(conn, event_id, event_type, "refunded", purchase.session_id)
            if taken_mc:
                await conn.execute(
                    """UPDATE org_pools SET total_mc = total_mc - $2,
                                            overdrawn_mc = greatest(allocated_mc - (total_mc - $2), 0)
                        WHERE org_id = $1""", org_id, taken_mc)
                await conn.execute(
                    """INSERT INTO ledger_entries (account, org_id, kind, delta_limit_mc, note)
                       VALUES ('pool', $1, 'adjustment', $2, $3)""", org_id, -taken_mc,
                    f"refund of payment {top_up_reference(purchase.session_id)} ({payment_intent}): "
                    f"{refunded} of {purchase.amount_minor} {purchase.currency} refunded in all")
            row = await conn.fetchrow(
                f"""UPDATE purchases SET refunded_minor = $2, refunded_mc = refunded_mc + $3,
                                         overdrawn = overdrawn OR $4,
                                         status = CASE WHEN $2 >= amount_minor THEN 'refunded'
                                                       ELSE 'partially_refunded' END
                     WHERE session_id = $1 RETURNING {PURCHASE_COLUMNS}""",
                purchase.session_id, refunded, taken_mc, overdrawn)
            return PaymentOutcome(event_id, event_type, "refunded", purchase_row(row))
