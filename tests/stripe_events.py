"""Stripe webhook events as Stripe sends them, signed as Stripe signs them, for tests.

Stripe's signature (https://docs.stripe.com/webhooks#verify-manually): the header
`Stripe-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>" under the endpoint's
secret>`. The payload is sent and signed as bytes; any change to them breaks the signature.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from typing import Any

API_VERSION = "2025-09-30.clover"


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The Stripe-Signature header for these exact bytes."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def event(event_type: str, obj: dict[str, Any], event_id: str | None = None) -> bytes:
    """An event's body, as Stripe serialises it (pretty-printed JSON, which the signature covers)."""
    body = {"id": event_id or f"evt_test_{secrets.token_hex(12)}", "object": "event", "api_version": API_VERSION,
            "created": int(time.time()), "data": {"object": obj}, "livemode": False, "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None}, "type": event_type}
    return json.dumps(body, indent=2).encode()


def checkout_completed(session: dict[str, Any], event_id: str | None = None) -> bytes:
    """checkout.session.completed for a paid session (tests/stripe_standin.py's `paid(session_id)`)."""
    return event("checkout.session.completed", session, event_id)
