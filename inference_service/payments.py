"""Buying credits with Stripe Checkout: the price, the packs and bounds, and the Checkout Session.

Money is exact here: an amount of credits (integer millicredits) becomes a price in the currency's
minor unit (cents) with rational arithmetic, never a float, from the price settings the authority
reads too (PAYMENT_CURRENCY, PAYMENT_CREDITS_PER_UNIT, PAYMENT_MINOR_UNITS_PER_UNIT: give both
services the same values). A purchase that would not cost a whole number of minor units is refused
with the step it must be a multiple of (never rounded: the authority turns the amount paid back
into exactly the credits asked for). At the defaults (100 credits per USD) the step is 1 credit =
1 cent.

This service only *starts* a purchase: it creates the session with the official `stripe` SDK
(STRIPE_API_BASE points it at a local stand-in in tests) and records it at the authority as pending.
Credits are created by the authority alone, when a Stripe event it has verified says the session
was paid (routes/payments.py relays the events unparsed). docs/payments.md has the whole flow.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

import stripe

from credit.v1 import admin_pb2
from credit_service.money import MAX_MILLICREDITS, MILLICREDITS_PER_CREDIT, format_credits, parse_credits

from . import errors
from .console import millicredits
from .service import credits_fields, iso_time
from .settings import Settings

_CURRENCY = re.compile(r"[a-z]{3}")
STATUS_NAMES = {admin_pb2.PURCHASE_STATUS_PENDING: "pending", admin_pb2.PURCHASE_STATUS_PAID: "paid",
                admin_pb2.PURCHASE_STATUS_PARTIALLY_REFUNDED: "partially_refunded",
                admin_pb2.PURCHASE_STATUS_REFUNDED: "refunded", admin_pb2.PURCHASE_STATUS_EXPIRED: "expired"}


def _credits_setting(name: str, value: str | Decimal) -> int:
    try:
        amount = parse_credits(str(value))
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    if not 0 < amount <= MAX_MILLICREDITS:
        raise ValueError(f"{name}: {value} is not a positive number of credits")
    return amount


@dataclass(frozen=True)
class Pricing:
    """The price of credits and what may be bought, from the settings (checked when the service starts)."""

    currency: str
    credits_per_unit: Decimal  # credits per major unit (1 USD)
    minor_per_unit: int  # minor units per major unit: 100 (cents), 1 (yen), 1000
    packs: tuple[int, ...]  # millicredits
    min_millicredits: int
    max_millicredits: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Pricing:
        """Raises ValueError naming the variable when the settings cannot price a purchase."""
        currency = settings.payment_currency.strip().lower()
        if not _CURRENCY.fullmatch(currency):
            raise ValueError(f"PAYMENT_CURRENCY: {settings.payment_currency!r} is not an ISO currency code")
        rate = settings.payment_credits_per_unit
        if not rate.is_finite() or rate <= 0:
            raise ValueError(f"PAYMENT_CREDITS_PER_UNIT: {rate} is not a positive number")
        try:
            packs = tuple(_credits_setting("PAYMENT_PACKS", p) for p in settings.payment_packs.split(",") if p.strip())
        except InvalidOperation:
            raise ValueError(f"PAYMENT_PACKS: {settings.payment_packs!r} is not a list of credits") from None
        minor = settings.payment_minor_units_per_unit
        if minor < 1 or str(minor).strip("0") != "1":
            raise ValueError(f"PAYMENT_MINOR_UNITS_PER_UNIT: {minor} is not a power of ten (1, 10, 100, …)")
        pricing = cls(currency, rate, minor, packs,
                      _credits_setting("PAYMENT_MIN_CREDITS", settings.payment_min_credits),
                      _credits_setting("PAYMENT_MAX_CREDITS", settings.payment_max_credits))
        if pricing.min_millicredits > pricing.max_millicredits:
            raise ValueError("PAYMENT_MIN_CREDITS is above PAYMENT_MAX_CREDITS")
        for pack in packs:
            problem = pricing.problem(pack)
            if problem:
                raise ValueError(f"PAYMENT_PACKS: {problem}")
        return pricing

    @property
    def exponent(self) -> int:
        """Digits of the minor unit: 2 for cents."""
        return len(str(self.minor_per_unit)) - 1

    def _minor_per_millicredit(self) -> Fraction:
        return Fraction(self.minor_per_unit) / (MILLICREDITS_PER_CREDIT * Fraction(self.credits_per_unit))

    @property
    def step_millicredits(self) -> int:
        """The smallest purchase that costs a whole number of minor units; every purchase is a multiple."""
        return self._minor_per_millicredit().denominator

    def problem(self, millicredits: int) -> str | None:
        """Why this many millicredits cannot be bought, or None."""
        low, high = format_credits(self.min_millicredits), format_credits(self.max_millicredits)
        if not self.min_millicredits <= millicredits <= self.max_millicredits:
            return f"credits must be from {low} to {high} (asked {format_credits(millicredits)})"
        if millicredits % self.step_millicredits:
            return (f"credits must be a multiple of {format_credits(self.step_millicredits)}: at "
                    f"{self.credits_per_unit} credits per {self.currency.upper()} that is the smallest amount "
                    "that costs a whole number of the currency's smallest unit")
        return None

    def amount_minor(self, millicredits: int) -> int:
        """The exact price in minor units (cents); only for an amount without a problem."""
        price = millicredits * self._minor_per_millicredit()
        if price.denominator != 1:
            raise ValueError(f"{millicredits} millicredits is not a whole number of minor units")
        return price.numerator

    def major(self, amount_minor: int) -> str:
        """Minor units as the major amount's text: 1250 → "12.50" (usd)."""
        return str(Decimal(amount_minor).scaleb(-self.exponent))

    def pack_dict(self, millicredits: int) -> dict[str, Any]:
        minor = self.amount_minor(millicredits)
        return {**credits_fields("credits", millicredits), "amount": self.major(minor), "amount_minor": minor}


def checkout_millicredits(pricing: Pricing, credits: Any, pack: int | None) -> int:
    """What a checkout body asks for, in millicredits: a pack (its index) or an amount within the bounds."""
    if (pack is None) == (credits is None):
        raise errors.bad_request("Send either credits (an amount) or pack (the index of a pack).", "invalid_amount")
    if pack is not None:
        if not 0 <= pack < len(pricing.packs):
            raise errors.bad_request(f"pack must be from 0 to {len(pricing.packs) - 1}", "invalid_pack")
        return pricing.packs[pack]
    amount = millicredits("credits", credits, allow_zero=False)
    problem = pricing.problem(amount)
    if problem:
        raise errors.bad_request(problem, "invalid_amount")
    return amount


def idempotency_key(org_id: str, user_id: str, request_id: str) -> str:
    """One Stripe session per (org, user, client request id): a double click, a retry, a reload reuse it."""
    digest = hashlib.sha256("\n".join((org_id, user_id, request_id)).encode()).hexdigest()
    return f"credits-checkout-{digest}"


@dataclass(frozen=True)
class Session:
    session_id: str
    url: str
    amount_minor: int
    currency: str


def stripe_error(error: stripe.StripeError) -> errors.ApiError:
    """Stripe's refusal as the console shows it (Stripe's own message, never our secret)."""
    message = error.user_message or str(error)
    if isinstance(error, stripe.IdempotencyError):
        return errors.conflict("This request_id was already used for another purchase; send a new request_id.",
                               "request_id_reused")
    if isinstance(error, (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError)):
        return errors.ApiError(503, "The payment provider is unreachable; nothing was charged. Retry shortly.",
                               "service_unavailable", "payment_provider_unavailable", headers={"Retry-After": "2"})
    return errors.ApiError(502, f"The payment provider refused the checkout: {message or type(error).__name__}",
                           "upstream_error", "payment_provider_refused")


class Checkout:
    """Creates Stripe Checkout Sessions with the official SDK."""

    def __init__(self, settings: Settings, pricing: Pricing):
        self.pricing = pricing
        self.client = stripe.StripeClient(
            settings.stripe_secret_key, base_addresses={"api": settings.stripe_api_base.rstrip("/")},
            http_client=stripe.HTTPXClient(timeout=20), max_network_retries=2)  # retries reuse the key

    def params(self, *, org_id: str, user_id: str, millicredits: int, return_to: str) -> dict[str, Any]:
        credits = format_credits(millicredits)
        return {
            "mode": "payment",
            "line_items": [{"quantity": 1, "price_data": {
                "currency": self.pricing.currency, "unit_amount": self.pricing.amount_minor(millicredits),
                "product_data": {"name": f"{credits} credits", "description": f"Credits for organization {org_id}"},
            }}],
            "metadata": {"org_id": org_id, "credits": str(millicredits), "created_by": user_id},
            "client_reference_id": org_id,
            "success_url": f"{return_to}/console/?checkout=success&session_id={{CHECKOUT_SESSION_ID}}",
            "cancel_url": f"{return_to}/console/?checkout=cancelled",
        }

    async def create(self, *, org_id: str, user_id: str, millicredits: int, request_id: str,
                     return_to: str) -> Session:
        params = self.params(org_id=org_id, user_id=user_id, millicredits=millicredits, return_to=return_to)
        try:
            session = await self.client.v1.checkout.sessions.create_async(
                params, {"idempotency_key": idempotency_key(org_id, user_id, request_id)})  # type: ignore[arg-type]
        except stripe.StripeError as error:
            raise stripe_error(error) from None
        return Session(session.id, session.url or "", session.amount_total or self.pricing.amount_minor(millicredits),
                       session.currency or self.pricing.currency)


def purchase_dict(p: admin_pb2.Purchase, pricing: Pricing) -> dict[str, Any]:
    """A purchase as the console shows it: credits as decimal strings, the price in the major unit."""
    return {"session_id": p.session_id, "status": STATUS_NAMES.get(p.status, "pending"),
            **credits_fields("credits", p.credits_millicredits),
            "amount": pricing.major(p.amount_minor),
            "amount_minor": p.amount_minor, "currency": p.currency,
            **credits_fields("refunded", p.refunded_millicredits), "overdrawn": p.overdrawn,
            "created_by": p.created_by, "created_at": iso_time(p.created_at), "paid_at": iso_time(p.paid_at)}


@dataclass(frozen=True)
class Payments:
    """What the payment routes share: the price, and the Stripe client when payments are on."""

    pricing: Pricing
    checkout: Checkout | None  # None: payments are off (STRIPE_SECRET_KEY or STRIPE_WEBHOOK_SECRET unset)
    public_url: str  # CONSOLE_PUBLIC_URL; empty: where the console's request came from

    @classmethod
    def from_settings(cls, settings: Settings) -> Payments:
        pricing = Pricing.from_settings(settings)
        on = bool(settings.stripe_secret_key and settings.stripe_webhook_secret)
        return cls(pricing, Checkout(settings, pricing) if on else None, settings.console_public_url.rstrip("/"))

    @property
    def enabled(self) -> bool:
        return self.checkout is not None

    def public(self) -> dict[str, Any]:
        """What the console's "Buy credits" panel needs to know."""
        if not self.enabled:
            return {"enabled": False, "message": NOT_CONFIGURED}
        p = self.pricing
        return {"enabled": True, "currency": p.currency, "credits_per_unit": str(p.credits_per_unit),
                "packs": [p.pack_dict(pack) for pack in p.packs], **credits_fields("min", p.min_millicredits),
                **credits_fields("max", p.max_millicredits), **credits_fields("step", p.step_millicredits)}


NOT_CONFIGURED = ("Payments are not configured on this deployment (STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET); "
                  "an operator adds credits with `creditctl top-up <org_id> <credits> --reference <payment id>`.")


def not_configured() -> errors.ApiError:
    return errors.ApiError(503, NOT_CONFIGURED, "service_unavailable", "payments_not_configured")
