"""Money in through Stripe Checkout (README, "Buying credits"): the authority's rules for purchases.

The REST service creates a Checkout Session and records it here (RecordCheckout, a pending purchase), then
relays every Stripe webhook event exactly as received (ApplyPaymentEvent). The authority trusts neither: it
verifies the Stripe-Signature itself with its own endpoint secret (the official `stripe` SDK), and prices
the credits itself from the amount Stripe says was paid, so a caller holding the payments role cannot
create credits by lying about a figure.

Events:

* `checkout.session.completed` with payment_status "paid", and `checkout.session.async_payment_succeeded`:
  the org in the session's metadata (`org_id`) is credited once per session (storage/payments.py).
  completed but not yet paid: outcome "not_paid" (the async event credits it later).
* `checkout.session.expired`: a pending purchase becomes expired.
* `charge.refunded`: the refunded share of the purchase's credits is taken back (cumulative; rounded down).
* A verified event this deployment cannot apply — another type, no or unknown org, another currency,
  nothing paid, a charge of no purchase — is acknowledged as "ignored" and writes nothing: Stripe retries
  an error for days and the retry would change nothing. The ones that concern money (an unknown org or
  another currency on a paid session, a refund of an unknown charge) are logged at error level for an
  operator, who can grant by hand or refund; a later redelivery is evaluated afresh.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import stripe

from .errors import PAYMENTS_NOT_CONFIGURED, FailedPrecondition, InvalidArgument
from .ids import ID
from .model import PaidSession, PaymentOutcome, Purchase
from .money import MAX_MILLICREDITS, millicredits_for_payment
from .settings import PaymentSettings
from .storage import Storage

log = logging.getLogger("credit_service.payments")

PAID_EVENTS = ("checkout.session.completed", "checkout.session.async_payment_succeeded")
EXPIRED_EVENT = "checkout.session.expired"
REFUND_EVENT = "charge.refunded"
_STRIPE_ID = re.compile(r"[A-Za-z0-9_]{1,255}")
MAX_AMOUNT_MINOR = 10**12
MAX_PURCHASES = 1000


def stripe_id(value: Any) -> str | None:
    """A Stripe object id (cs_…, pi_…, evt_…) or None."""
    return value if isinstance(value, str) and _STRIPE_ID.fullmatch(value) else None


def whole(value: Any) -> int | None:
    """A JSON integer (never a boolean or a float), or None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Payments:
    """Purchases: RecordCheckout, ApplyPaymentEvent, ListPurchases."""

    def __init__(self, storage: Storage, settings: PaymentSettings):
        if settings.credits_per_unit <= 0 or settings.minor_units_per_unit <= 0:
            raise ValueError("PAYMENT_CREDITS_PER_UNIT and PAYMENT_MINOR_UNITS_PER_UNIT must be positive")
        self._storage = storage
        self._settings = settings

    def credits_for(self, amount_minor: int) -> int:
        """Millicredits an amount in the configured currency's minor unit buys, rounded down."""
        return millicredits_for_payment(amount_minor, self._settings.credits_per_unit,
                                        self._settings.minor_units_per_unit)

    # ---- RecordCheckout ----------------------------------------------------

    async def record_checkout(self, org_id: str, session_id: str, credits_mc: int, amount_minor: int,
                              currency: str, created_by: str) -> Purchase:
        if not ID.fullmatch(org_id or ""):
            raise InvalidArgument("org_id", "must be an organization id")
        if not (session_id.startswith("cs_") and stripe_id(session_id)):
            raise InvalidArgument("session_id", "must be a Stripe Checkout Session id (cs_…)")
        if currency != self._settings.currency:
            raise InvalidArgument("currency", f"must be {self._settings.currency!r}, the currency sold in")
        if not 1 <= amount_minor <= MAX_AMOUNT_MINOR:
            raise InvalidArgument("amount_minor", f"must be from 1 to {MAX_AMOUNT_MINOR}")
        computed = self.credits_for(amount_minor)
        if not 1 <= computed <= MAX_MILLICREDITS:
            raise InvalidArgument("amount_minor", "buys no credits, or more than one top-up may add")
        if credits_mc not in (0, computed):
            raise InvalidArgument("credits_millicredits", f"must be 0 or {computed}: the authority prices "
                                                          f"{amount_minor} {currency} itself")
        if len(created_by) > 128 or not created_by.isprintable():
            raise InvalidArgument("created_by", "must be at most 128 printable characters")
        return await self._storage.record_checkout(org_id, session_id, computed, amount_minor, currency,
                                                   created_by)

    async def list_purchases(self, org_id: str, limit: int) -> list[Purchase]:
        if not ID.fullmatch(org_id or ""):
            raise InvalidArgument("org_id", "must be an organization id")
        if not 0 <= limit <= MAX_PURCHASES:
            raise InvalidArgument("limit", f"must be 0 (default 100) to {MAX_PURCHASES}")
        return await self._storage.list_purchases(org_id, limit or 100)

    # ---- ApplyPaymentEvent -------------------------------------------------

    def verify(self, payload: bytes, signature: str) -> dict[str, Any]:
        """The event, when its Stripe-Signature is valid under this deployment's secret and recent."""
        if not self._settings.webhook_secret:
            raise FailedPrecondition("payments are not configured: set STRIPE_WEBHOOK_SECRET on the authority",
                                     PAYMENTS_NOT_CONFIGURED)
        if not signature:
            raise InvalidArgument("signature", "is required (the Stripe-Signature header)")
        try:
            stripe.Webhook.construct_event(payload, signature, self._settings.webhook_secret,
                                           tolerance=self._settings.tolerance_seconds)
        except stripe.SignatureVerificationError:
            raise InvalidArgument("signature", "does not verify: unsigned, signed with another secret, "
                                               "tampered with or too old") from None
        except (ValueError, TypeError, AttributeError, KeyError):  # not UTF-8, or signed but not a JSON object
            raise InvalidArgument("payload", "is not a Stripe event") from None
        event = json.loads(payload)
        if not isinstance(event, dict):
            raise InvalidArgument("payload", "is not a Stripe event")
        obj = event.get("data", {}).get("object") if isinstance(event.get("data"), dict) else None
        if not (stripe_id(event.get("id")) and isinstance(event.get("type"), str) and isinstance(obj, dict)):
            raise InvalidArgument("payload", "is not a Stripe event (id, type, data.object)")
        return event

    async def apply_event(self, payload: bytes, signature: str) -> PaymentOutcome:
        event = self.verify(payload, signature)
        event_id, event_type, obj = event["id"], event["type"], event["data"]["object"]
        if event_type in PAID_EVENTS and obj.get("object") == "checkout.session":
            return await self._paid(event_id, event_type, obj)
        if event_type == EXPIRED_EVENT and stripe_id(obj.get("id")):
            return await self._storage.expire_session(event_id, event_type, obj["id"])
        if event_type == REFUND_EVENT and obj.get("object") == "charge":
            payment_intent, refunded = stripe_id(obj.get("payment_intent")), whole(obj.get("amount_refunded"))
            if payment_intent and refunded is not None and refunded > 0:
                outcome = await self._storage.apply_refund(event_id, event_type, payment_intent, refunded)
                if outcome.purchase is None:
                    log.error("refund %s of payment intent %s matches no purchase: nothing taken back",
                              event_id, payment_intent)
                return outcome
        return PaymentOutcome(event_id, event_type, "ignored")

    async def _paid(self, event_id: str, event_type: str, session: dict[str, Any]) -> PaymentOutcome:
        """A completed session: credited once when paid in the configured currency to a known org."""
        session_id = stripe_id(session.get("id"))
        found = session.get("metadata")
        metadata: dict[str, Any] = found if isinstance(found, dict) else {}
        org_id, amount, currency = metadata.get("org_id"), whole(session.get("amount_total")), session.get("currency")
        if session_id is None:
            return PaymentOutcome(event_id, event_type, "ignored")
        if session.get("payment_status") != "paid":
            return PaymentOutcome(event_id, event_type, "not_paid")
        problem = ""
        if not isinstance(org_id, str) or not ID.fullmatch(org_id) or not await self._storage.org_exists(org_id):
            problem = f"names no organization of this authority (metadata.org_id {org_id!r})"
        elif currency != self._settings.currency:
            problem = f"was paid in {currency!r}, not {self._settings.currency!r}"
        elif amount is None or not 1 <= amount <= MAX_AMOUNT_MINOR or not 1 <= self.credits_for(amount):
            problem = f"has no amount that buys credits (amount_total {amount!r})"
        if problem:
            log.error("paid checkout session %s (event %s) %s: nothing credited; refund it or grant by hand",
                      session_id, event_id, problem)
            return PaymentOutcome(event_id, event_type, "ignored")
        assert isinstance(org_id, str) and amount is not None and isinstance(currency, str)
        created_by = str(metadata.get("created_by") or "")[:128]
        paid = PaidSession(org_id, session_id, self.credits_for(amount), amount, currency,
                           stripe_id(session.get("payment_intent")), created_by if created_by.isprintable() else "")
        return await self._storage.apply_paid_session(event_id, event_type, paid)
