"""Buying credits over REST: Checkout Sessions created through the real `stripe` SDK against a local
stand-in (what was sent, one session per request id), refused purchases that create nothing, and
Stripe's webhook relayed to the authority, which credits the pool exactly once per paid session and
refuses anything not signed with its secret. Real PostgreSQL, authority and REST processes."""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import pytest
from stripe_events import checkout_completed, event, sign

from credit.v1 import admin_pb2

from . import payments_fixtures
from .conftest import Org, auth
from .payments_fixtures import STRIPE_SECRET_KEY, WEBHOOK_SECRET

# The payment fixtures, shared with the browser test (a module's fixtures are the names it holds).
stripe_standin = payments_fixtures.stripe_standin
payments_authority = payments_fixtures.payments_authority
payments_inference = payments_fixtures.payments_inference

API = "/api/v1/console"
WEBHOOK = "/api/v1/payments/stripe/webhook"


def post(inference, key: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{inference.url}{API}{path}", headers=auth(key), json=body, timeout=60)


def get(inference, key: str, path: str) -> httpx.Response:
    return httpx.get(f"{inference.url}{API}{path}", headers=auth(key), timeout=30)


def deliver(inference, payload: bytes, signature: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "Stripe/1.0"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    return httpx.post(f"{inference.url}{WEBHOOK}", content=payload, headers=headers, timeout=60)


def pool_total(admin, org_id: str) -> int:
    return admin.GetOrganization(admin_pb2.GetOrganizationRequest(org_id=org_id)).pool_total_millicredits


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["message"] and body["type"] and body["code"], body
    return body


def test_payment_options_and_a_deployment_without_payments(console_inference, payments_inference, org: Org):
    options = get(payments_inference, org.keys["member"], "/payments").json()
    assert options == {
        "enabled": True, "currency": "usd", "credits_per_unit": "100",
        "packs": [{"credits": f"{c}.000", "credits_millicredits": c * 1000, "amount": f"{c // 100}.00",
                   "amount_minor": c} for c in (1000, 5000, 20000)],
        "min": "500.000", "min_millicredits": 500_000, "max": "100000.000", "max_millicredits": 100_000_000,
        "step": "1.000", "step_millicredits": 1000}

    # The console's own service has no Stripe keys: it says so, and how an operator adds credits instead.
    off = get(console_inference, org.keys["owner"], "/payments").json()
    assert off["enabled"] is False and "creditctl top-up" in off["message"]
    refused = error_of(post(console_inference, org.keys["owner"], "/org/checkout",
                            {"credits": "1000", "request_id": "r1"}), 503)
    assert refused["code"] == "payments_not_configured" and "creditctl top-up" in refused["message"]
    assert error_of(deliver(console_inference, event("ping", {}), sign(b"{}", WEBHOOK_SECRET)),
                    503)["code"] == "payments_not_configured"


def test_refused_checkouts_create_no_session(payments_inference, org: Org, world, admin, stripe_standin):
    before = len(stripe_standin.created())
    assert error_of(post(payments_inference, org.keys["member"], "/org/checkout",
                         {"credits": "1000", "request_id": "m1"}), 403)["type"] == "permission_error"
    assert error_of(get(payments_inference, org.keys["member"], "/org/purchases"), 403)
    from rest_support import make_key

    solo_key = make_key(admin, world.user(individual_mc=1000))[0]
    assert error_of(post(payments_inference, solo_key, "/org/checkout", {"credits": "1000", "request_id": "s1"}),
                    403)
    bad = [({"credits": "499", "request_id": "b"}, "from 500.000 to 100000.000"),
           ({"credits": "100001", "request_id": "b"}, "from 500.000 to 100000.000"),
           ({"credits": "0", "request_id": "b"}, "credits"), ({"credits": "-600", "request_id": "b"}, "credits"),
           ({"credits": "600.5", "request_id": "b"}, "multiple of 1.000"),
           ({"credits": True, "request_id": "b"}, "credits"), ({"credits": "1e3", "request_id": "b"}, "credits"),
           ({"pack": 3, "request_id": "b"}, "pack must be from 0 to 2"),
           ({"pack": -1, "request_id": "b"}, "pack must be from 0 to 2"),
           ({"pack": "1", "request_id": "b"}, "pack"),
           ({"pack": 0, "credits": "1000", "request_id": "b"}, "either credits"),
           ({"request_id": "b"}, "either credits"), ({"credits": "1000"}, "request_id"),
           ({"credits": "1000", "request_id": "a b"}, "request_id"),
           ({"credits": "1000", "request_id": "x" * 129}, "request_id"),
           ({"credits": "1000", "request_id": "b", "price": "1"}, "price")]
    for body, says in bad:
        refused = error_of(post(payments_inference, org.keys["owner"], "/org/checkout", body), 400)
        assert says in refused["message"], (body, refused)
    assert len(stripe_standin.created()) == before  # nothing reached Stripe


def checkout(inference, key: str, body: dict) -> dict:
    response = post(inference, key, "/org/checkout", body)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_checkout_is_one_stripe_session_and_a_pending_purchase(payments_inference, org: Org, stripe_standin):
    request_id = f"buy-{uuid.uuid4().hex[:8]}"
    body = {"credits": "2500", "request_id": request_id}
    before = len(stripe_standin.created())
    answers: list[dict] = []
    clicks = [threading.Thread(target=lambda: answers.append(checkout(payments_inference, org.keys["owner"], body)))
              for _ in range(3)]  # a triple click
    for click in clicks:
        click.start()
    for click in clicks:
        click.join()
    assert len(answers) == 3 and len({a["session_id"] for a in answers}) == 1
    answer = answers[0]
    session_id = answer["session_id"]
    assert session_id.startswith("cs_test_") and answer["url"] == f"{stripe_standin.url}/pay/{session_id}"
    assert len(stripe_standin.sessions_with(org.org_id)) == 1  # one session, however many clicks

    sent = stripe_standin.created()[before:]
    assert len(sent) == 3 and len({r.headers["idempotency-key"] for r in sent}) == 1
    first = sent[0]
    assert first.headers["authorization"] == f"Bearer {STRIPE_SECRET_KEY}"
    assert first.form == {
        "mode": "payment", "line_items[0][quantity]": "1", "line_items[0][price_data][currency]": "usd",
        "line_items[0][price_data][unit_amount]": "2500",  # 2,500 credits at 100 per USD: 25.00 USD
        "line_items[0][price_data][product_data][name]": "2500.000 credits",
        "line_items[0][price_data][product_data][description]": f"Credits for organization {org.org_id}",
        "metadata[org_id]": org.org_id, "metadata[credits]": "2500000", "metadata[created_by]": org.owner,
        "client_reference_id": org.org_id,
        "success_url": f"{payments_inference.url}/console/?checkout=success&session_id={{CHECKOUT_SESSION_ID}}",
        "cancel_url": f"{payments_inference.url}/console/?checkout=cancelled"}

    # Another purchase (a pack, by an admin) is another session under another key.
    pack = checkout(payments_inference, org.keys["admin"], {"pack": 1, "request_id": f"pack-{uuid.uuid4().hex}"})
    last = stripe_standin.created()[-1]
    assert last.form["line_items[0][price_data][unit_amount]"] == "5000"
    assert last.form["metadata[credits]"] == "5000000" and last.form["metadata[created_by]"] == org.admin_user
    assert last.headers["idempotency-key"] != first.headers["idempotency-key"]
    # The same request id with another amount is refused by Stripe: 409, nothing new.
    reused = post(payments_inference, org.keys["owner"], "/org/checkout", {"credits": "3000", "request_id": request_id})
    assert error_of(reused, 409)["code"] == "request_id_reused"
    assert len(stripe_standin.sessions_with(org.org_id)) == 2

    purchases = get(payments_inference, org.keys["owner"], "/org/purchases").json()["data"]
    assert [(p["session_id"], p["status"], p["credits"], p["amount"], p["currency"], p["created_by"])
            for p in purchases] == [(pack["session_id"], "pending", "5000.000", "50.00", "usd", org.admin_user),
                                    (session_id, "pending", "2500.000", "25.00", "usd", org.owner)]


def test_the_webhook_credits_the_pool_once_and_refuses_what_stripe_did_not_sign(
        payments_inference, org: Org, admin, stripe_standin):
    answer = checkout(payments_inference, org.keys["owner"], {"pack": 0, "request_id": uuid.uuid4().hex})
    session = stripe_standin.paid(answer["session_id"])
    payload = checkout_completed(session)
    before = pool_total(admin, org.org_id)

    # Not Stripe's: nothing applied, whatever is wrong.
    tampered = payload.replace(b'"amount_total": 1000', b'"amount_total": 9000')
    assert tampered != payload
    stale = int(time.time()) - 3600
    for body, signature in [(tampered, sign(payload, WEBHOOK_SECRET)), (payload, sign(payload, "whsec_not_ours")),
                            (payload, sign(payload, WEBHOOK_SECRET, stale)), (payload, "t=1,v1=00"),
                            (payload, None), (payload + b" ", sign(payload, WEBHOOK_SECRET))]:
        error_of(deliver(payments_inference, body, signature), 400)
    assert pool_total(admin, org.org_id) == before
    assert purchase(payments_inference, org, answer["session_id"])["status"] == "pending"
    too_big = b'{"pad": "' + b"x" * (256 * 1024) + b'"}'
    assert error_of(deliver(payments_inference, too_big, sign(too_big, WEBHOOK_SECRET)), 413)

    # Stripe's, delivered five times (at once): credited once.
    outcomes: list[str] = []

    def redeliver() -> None:
        response = deliver(payments_inference, payload, sign(payload, WEBHOOK_SECRET))
        assert response.status_code == 200, response.text
        assert response.json()["received"] is True
        outcomes.append(response.json()["outcome"])

    deliveries = [threading.Thread(target=redeliver) for _ in range(5)]
    for delivery in deliveries:
        delivery.start()
    for delivery in deliveries:
        delivery.join()
    assert sorted(outcomes) == ["already_applied"] * 4 + ["credited"], outcomes
    assert pool_total(admin, org.org_id) == before + 1_000_000  # pack 0: 1,000 credits
    paid = purchase(payments_inference, org, answer["session_id"])
    assert (paid["status"], paid["credits"], paid["amount"]) == ("paid", "1000.000", "10.00") and paid["paid_at"]
    # The audit log: the checkout names the owner who started it; Stripe's event names no one, only its address.
    records = get(payments_inference, org.keys["owner"], "/audit?limit=1000").json()["data"]
    about = [(r["action"], r["on_behalf_of"].split(" (")[0], r["forwarded_for"]) for r in records
             if r["target_id"] == answer["session_id"]]
    assert about[-1] == ("RecordCheckout", f"user:{org.owner}", "127.0.0.1")
    assert ("ApplyPaymentEvent", "", "127.0.0.1") in about[:-1]


def purchase(inference, org: Org, session_id: str) -> dict:
    listed = get(inference, org.keys["owner"], "/org/purchases").json()["data"]
    return next(p for p in listed if p["session_id"] == session_id)


@pytest.fixture
def orphan_inference(console_tokens, models_file, stripe_standin):
    """A REST service with payments on whose authority is gone."""
    from rest_support import InferenceProcess

    class Gone:
        addr = "127.0.0.1:1"

    process = InferenceProcess(Gone(), console_tokens.console, models_file, {  # type: ignore[arg-type]
        "STRIPE_SECRET_KEY": STRIPE_SECRET_KEY, "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": stripe_standin.url, "INFERENCE_AUTHORITY_TIMEOUT_SECONDS": "0.5"}).start()
    yield process
    process.stop()


def test_the_webhook_answers_503_while_the_authority_is_unreachable_so_stripe_retries(orphan_inference):
    payload = event("checkout.session.completed", {"id": "cs_test_x"})
    refused = error_of(deliver(orphan_inference, payload, sign(payload, WEBHOOK_SECRET)), 503)
    assert refused["code"] == "authority_unavailable"
