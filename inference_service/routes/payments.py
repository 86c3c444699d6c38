"""Buying credits: the console's checkout and purchases, and Stripe's webhook.

* POST /api/v1/console/org/checkout (owner/admin): creates a Stripe Checkout Session for a pack or
  an amount and records it at the authority as a pending purchase; answers the URL to send the
  browser to.
* GET /api/v1/console/org/purchases (owner/admin): the org's purchases, pending ones included.
* GET /api/v1/console/payments: whether payments are on, the packs, bounds and price.
* POST /api/v1/payments/stripe/webhook (Stripe, no API key): the raw body and its Stripe-Signature,
  relayed unparsed to the authority, which verifies the signature with its own secret and credits
  the pool once per paid session. This service never decides that money arrived.

How it fits together: docs/payments.md.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import Any

import grpc
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from credit.v1 import admin_pb2
from credit_client.retry import RETRYABLE

from .. import acting, errors
from ..console import Amount, Viewer, require_id
from ..payments import Payments, checkout_millicredits, not_configured, purchase_dict
from .console import viewer

log = logging.getLogger("inference_service")

MAX_EVENT_BYTES = 256 * 1024  # Stripe's events are a few KiB
TAGS: list[str | Enum] = ["payments"]
CONSOLE: dict[int | str, dict[str, Any]] = {code: {"description": text} for code, text in (
    (400, "bad request (amount out of bounds, not a multiple of the step, unknown pack)"),
    (401, "missing or invalid API key"), (403, "not an owner or admin of the organization"),
    (409, "request_id already used for another purchase"), (413, "body too large"), (415, "not JSON"),
    (429, "too many failed authentication attempts"), (502, "the payment provider refused the checkout"),
    (503, "payments not configured, or the payment provider or credit authority unavailable"))}
READS: dict[int | str, dict[str, Any]] = {code: CONSOLE[code] for code in (401, 403, 429, 503)}
WEBHOOK: dict[int | str, dict[str, Any]] = {code: {"description": text} for code, text in (
    (400, "not signed by Stripe with this deployment's secret, tampered or stale: nothing applied"),
    (413, f"body larger than {MAX_EVENT_BYTES} bytes"), (415, "not JSON"),
    (503, "payments not configured, or the credit authority unavailable: Stripe retries"))}
router = APIRouter()


class CheckoutBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    credits: Amount | None = Field(None, description="credits to buy, e.g. \"2500\" (or send pack)")
    pack: StrictInt | None = Field(None, description="index of one of GET /api/v1/console/payments' packs")
    request_id: str = Field(description="the client's id for this purchase (1-128 of A-Z a-z 0-9 . _ : @ -); "
                                        "sending it again returns the same checkout session")


def payments_of(request: Request) -> Payments:
    return request.app.state.payments


@router.get("/api/v1/console/payments", tags=TAGS, responses=READS)
async def payment_options(request: Request, who: Viewer = Depends(viewer)):
    """Whether credits can be bought here, and the packs, bounds and price (credits per currency unit)."""
    return payments_of(request).public()


@router.post("/api/v1/console/org/checkout", tags=TAGS, responses=CONSOLE)
async def checkout(body: CheckoutBody, request: Request, who: Viewer = Depends(viewer)):
    """Starts a purchase of credits for the org's pool: a Stripe Checkout Session, recorded as pending.
    The credits arrive when Stripe reports the payment (the webhook), never before."""
    who.require_admin()
    payments = payments_of(request)
    if payments.checkout is None:
        raise not_configured()
    require_id("request_id", body.request_id)
    amount = checkout_millicredits(payments.pricing, body.credits, body.pack)
    return_to = payments.public_url or str(request.base_url).rstrip("/")
    session = await payments.checkout.create(org_id=who.org_id, user_id=who.user_id, millicredits=amount,
                                             request_id=body.request_id, return_to=return_to)
    purchase = await who.admin.record_checkout(admin_pb2.RecordCheckoutRequest(
        org_id=who.org_id, session_id=session.session_id, credits_millicredits=amount,
        amount_minor=session.amount_minor, currency=session.currency, created_by=who.user_id))
    return {"url": session.url, "session_id": session.session_id, "purchase": purchase_dict(purchase, payments.pricing)}


@router.get("/api/v1/console/org/purchases", tags=TAGS, responses=READS)
async def purchases(request: Request, who: Viewer = Depends(viewer)):
    """The org's purchases, newest first: pending until Stripe reports the payment, then paid."""
    who.require_admin()
    pricing = payments_of(request).pricing
    listed = await who.admin.list_purchases(admin_pb2.ListPurchasesRequest(org_id=who.org_id, limit=100))
    return {"data": [purchase_dict(p, pricing) for p in listed.purchases]}


@router.post("/api/v1/payments/stripe/webhook", tags=TAGS, responses=WEBHOOK)
async def stripe_webhook(request: Request):
    """Stripe's events (checkout.session.completed, checkout.session.async_payment_succeeded,
    checkout.session.expired, charge.refunded), relayed byte for byte to the authority, which verifies
    the Stripe-Signature with its own endpoint secret and applies each event once."""
    if not payments_of(request).enabled:
        raise not_configured()
    payload = await request.body()  # the bytes Stripe signed: never parsed and re-serialised here
    if len(payload) > MAX_EVENT_BYTES:
        raise errors.ApiError(413, f"Event larger than {MAX_EVENT_BYTES} bytes.", "invalid_request_error",
                              "request_too_large")
    signature = request.headers.get("stripe-signature", "")
    if not signature:
        raise errors.bad_request("The Stripe-Signature header is missing.", "invalid_signature")
    acting.begin(request)  # the audit log's record of the event names Stripe's address, and no person
    admin = request.app.state.service.client.admin
    try:
        result = await admin.apply_payment_event(admin_pb2.ApplyPaymentEventRequest(
            payload=payload, signature=signature))
    except grpc.aio.AioRpcError as error:
        raise webhook_error(error) from None
    return {"received": True, "outcome": result.outcome, "event_id": result.event_id,
            "event_type": result.event_type}


def webhook_error(error: grpc.aio.AioRpcError) -> errors.ApiError:
    """INVALID_ARGUMENT is the authority's final no (the event was not applied, and will not be); anything
    else is 503, so Stripe delivers the event again later."""
    if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
        return errors.bad_request(f"Event refused: {error.details() or 'invalid'}", "invalid_event")
    if error.code() not in RETRYABLE:
        log.error("the authority could not apply a payment event: %s %s", error.code().name, error.details())
    return errors.ApiError(503, "The credit authority could not take the event now; deliver it again.",
                           "service_unavailable", "authority_unavailable", headers={"Retry-After": "5"})
