"""Fixtures of the payment tests: a local Stripe stand-in, and an authority and a REST service with
payments on (both given the same webhook secret and price), next to the console's pair without them.

Nothing here reaches Stripe: the REST service's STRIPE_API_BASE is the stand-in, and the events are
signed by tests/stripe_events.py with the test's webhook secret, as Stripe signs them.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from conftest import AuthorityProcess
from rest_support import InferenceProcess
from stripe_standin import StripeStandIn

STRIPE_SECRET_KEY = f"sk_test_{secrets.token_hex(12)}"
WEBHOOK_SECRET = f"whsec_{secrets.token_hex(16)}"
PRICE = {"PAYMENT_CURRENCY": "usd", "PAYMENT_CREDITS_PER_UNIT": "100"}  # 1 credit = 1 cent, as the defaults
BOUNDS = {"PAYMENT_PACKS": "1000,5000,20000", "PAYMENT_MIN_CREDITS": "500", "PAYMENT_MAX_CREDITS": "100000"}


@pytest.fixture(scope="session")
def stripe_standin() -> StripeStandIn:
    server = StripeStandIn(STRIPE_SECRET_KEY).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def payments_authority(database_url, console_tokens) -> AuthorityProcess:
    process = AuthorityProcess(database_url, console_tokens, {"STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET, **PRICE,
                                                              "CREDIT_ALERTS_ENABLED": "0"}).start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def payments_inference(payments_authority, console_tokens, models_file: Path, stripe_standin) -> InferenceProcess:
    process = InferenceProcess(payments_authority, console_tokens.console, models_file, {
        "STRIPE_SECRET_KEY": STRIPE_SECRET_KEY, "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": stripe_standin.url, **PRICE, **BOUNDS}).start()
    yield process
    process.stop()
