"""Stripe webhook events for the authority's payment tests: the objects the authority reads, the test
secret and prices, and a running authority configured for payments. Events are built and signed by
tests/stripe_events.py (Stripe's documented scheme, written independently of the `stripe` SDK the
authority verifies with), the one signer the REST tests use too.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import pytest
import stripe_events
from conftest import AuthorityProcess, Stub, Tokens

from credit.v1 import admin_pb2, admin_pb2_grpc

SECRET = "whsec_" + "t3st" * 8
# 12.345 credits a dollar: 1 cent buys 123.45 millicredits, so every rounding shows.
CREDITS_PER_UNIT = "12.345"
PAYMENT_ENV = {"STRIPE_WEBHOOK_SECRET": SECRET, "PAYMENT_CREDITS_PER_UNIT": CREDITS_PER_UNIT,
               "CREDIT_ALERT_RETRY_BASE_SECONDS": "0.3", "CREDIT_ALERT_POLL_SECONDS": "1"}
COUNTED = ("purchases", "payment_events", "pool_top_ups", "ledger_entries")


def credits_for(amount_cents: int) -> int:
    """What the authority must credit for an amount in cents at CREDITS_PER_UNIT (rounded down), computed
    here without Decimal: 12.345 credits a dollar = 12,345 millicredits per 100 cents."""
    return amount_cents * 12_345 // 100


def sign(payload: bytes, secret: str = SECRET, timestamp: int | None = None) -> str:
    """The Stripe-Signature header for these bytes, under the authority tests' secret by default."""
    return stripe_events.sign(payload, secret, timestamp)


def new_id(prefix: str) -> str:
    return f"{prefix}_test_{secrets.token_hex(12)}"


def session(org_id: str, amount_total: int, *, currency: str = "usd", payment_status: str = "paid",
            session_id: str | None = None, payment_intent: str | None = None) -> dict[str, Any]:
    """A Checkout Session object (the fields the authority reads, and some it does not)."""
    return {"id": session_id or new_id("cs"), "object": "checkout.session", "amount_subtotal": amount_total,
            "amount_total": amount_total, "currency": currency, "mode": "payment", "payment_status": payment_status,
            "payment_intent": payment_intent or new_id("pi"), "status": "complete",
            "metadata": {"org_id": org_id, "credits_millicredits": "999999999999"},  # never trusted
            "customer_details": {"email": "buyer@example.com"}}


def charge_refunded(payment_intent: str, amount: int, amount_refunded: int) -> dict[str, Any]:
    """A Charge as charge.refunded carries it: amount_refunded is cumulative, in the minor unit."""
    return {"id": new_id("ch"), "object": "charge", "amount": amount, "amount_captured": amount,
            "amount_refunded": amount_refunded, "currency": "usd", "payment_intent": payment_intent,
            "refunded": amount_refunded >= amount, "status": "succeeded"}


@dataclass
class Payments:
    """The REST service's side, as a test drives it: its token (spend+read+admin+payments) on an authority
    configured with SECRET, the operator's stub, and the database."""

    authority: AuthorityProcess
    tokens: Tokens
    channel: grpc.Channel

    @property
    def service(self) -> Stub:
        return Stub(admin_pb2_grpc.CreditAdminStub(self.channel), self.tokens.service)

    @property
    def operator(self) -> Stub:
        return Stub(admin_pb2_grpc.CreditAdminStub(self.channel), self.tokens.admin)

    def deliver(self, payload: bytes, signature: str | None = None) -> admin_pb2.ApplyPaymentEventResponse:
        return self.service.ApplyPaymentEvent(admin_pb2.ApplyPaymentEventRequest(
            payload=payload, signature=sign(payload) if signature is None else signature))

    def pool(self, org_id: str) -> admin_pb2.Organization:
        return self.operator.GetOrganization(admin_pb2.GetOrganizationRequest(org_id=org_id))

    def purchases(self, org_id: str) -> list[admin_pb2.Purchase]:
        return list(self.operator.ListPurchases(admin_pb2.ListPurchasesRequest(org_id=org_id)).purchases)

    def query(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async def run() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(self.authority.database_url)
            try:
                return await conn.fetch(sql, *args)
            finally:
                await conn.close()

        return asyncio.run(run())

    def counts(self) -> dict[str, int]:
        return {table: self.query(f"SELECT count(*) FROM {table}")[0][0] for table in COUNTED}  # fixed names

    def ledger(self, org_id: str) -> list[tuple[str, int, str]]:
        return [(r["kind"], r["delta_limit_mc"], r["note"]) for r in self.query(
            "SELECT kind, delta_limit_mc, note FROM ledger_entries WHERE account = 'pool' AND org_id = $1 "
            "ORDER BY entry_id", org_id)]

    def violations(self) -> dict[str, list]:
        from invariants import violations

        async def run() -> dict[str, list]:
            conn = await asyncpg.connect(self.authority.database_url)
            try:
                return await violations(conn)
            finally:
                await conn.close()

        return asyncio.run(run())


@pytest.fixture(scope="module")
def payments(database_url: str, tokens: Tokens, authority: AuthorityProcess):
    """An authority of the test module's own, configured for payments (PAYMENT_ENV), beside the
    session's authority (on the same database)."""
    process = AuthorityProcess(database_url, tokens, PAYMENT_ENV).start()
    with grpc.insecure_channel(process.addr) as channel:
        yield Payments(process, tokens, channel)
    process.stop()
