"""Money in through Stripe Checkout, the authority's side (credit_service/payments.py): RecordCheckout,
ApplyPaymentEvent and ListPurchases against an authority configured with an endpoint secret, events signed
as Stripe signs them (tests/payment_events.py). A paid session credits its org exactly once however the
events arrive; anything unsigned, tampered or stale is refused and writes nothing."""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from conftest import Stub
from helpers import bad_request, error_info
from payment_events import charge_refunded, credits_for, new_id, session, sign
from stripe_events import event

from credit.v1 import admin_pb2, admin_pb2_grpc


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value


def test_a_paid_session_delivered_over_and_over_concurrently_in_any_order_is_credited_once(payments, world):
    for round_ in range(3):
        org_id = world.org()
        paid = session(org_id, 2_500)
        sid = paid["id"]
        if round_:  # once without a RecordCheckout first: the webhook alone creates the purchase
            payments.service.RecordCheckout(admin_pb2.RecordCheckoutRequest(
                org_id=org_id, session_id=sid, amount_minor=2_500, currency="usd", created_by="owner-1"))
        completed = event("checkout.session.completed", paid)
        twin = event("checkout.session.async_payment_succeeded", paid)
        expired = event("checkout.session.expired", {**paid, "status": "expired", "payment_status": "unpaid"})
        other = event("customer.created", {"id": new_id("cus"), "object": "customer"})
        deliveries = [completed] * 5 + [twin] * 2 + [expired, other]
        random.Random(round_).shuffle(deliveries)
        with ThreadPoolExecutor(len(deliveries)) as pool:
            answers = list(pool.map(payments.deliver, deliveries))

        by_kind: dict[bytes, list[str]] = {}
        for payload, answer in zip(deliveries, answers, strict=True):
            by_kind.setdefault(payload, []).append(answer.outcome)
        paid_outcomes = sorted(by_kind[completed] + by_kind[twin])
        assert paid_outcomes == ["already_applied"] * 6 + ["credited"], paid_outcomes
        assert by_kind[other] == ["ignored"]
        # Expired before the payment (a pending purchase, later paid), after it, or with no purchase yet.
        assert by_kind[expired][0] in ("expired", "already_applied", "ignored")
        credited = next(a for a in answers if a.outcome == "credited")
        assert credited.purchase.status == admin_pb2.PURCHASE_STATUS_PAID
        assert credited.purchase.credits_millicredits == credits_for(2_500) == 308_625
        assert payments.pool(org_id).pool_total_millicredits == 308_625
        assert payments.ledger(org_id) == [("top_up", 308_625, f"payment stripe:{sid} ({paid['payment_intent']})")]
        rows = payments.query("SELECT source, created_by, amount_mc FROM pool_top_ups WHERE org_id = $1", org_id)
        assert [tuple(r) for r in rows] == [("payment", paid["payment_intent"], 308_625)]
        [purchase] = payments.purchases(org_id)
        assert (purchase.status, purchase.session_id, purchase.payment_intent) == \
            (admin_pb2.PURCHASE_STATUS_PAID, sid, paid["payment_intent"])
        assert purchase.created_by == ("owner-1" if round_ else "")
    assert not payments.violations()


def test_an_unpaid_session_is_not_credited_until_its_async_payment_succeeds(payments, world):
    org_id = world.org()
    pending = session(org_id, 1_000, payment_status="unpaid")
    before = payments.counts()
    answer = payments.deliver(event("checkout.session.completed", pending))
    assert (answer.outcome, answer.HasField("purchase")) == ("not_paid", False)
    assert payments.counts() == before and payments.pool(org_id).pool_total_millicredits == 0

    succeeded = event("checkout.session.async_payment_succeeded", {**pending, "payment_status": "paid"})
    assert payments.deliver(succeeded).outcome == "credited"
    assert payments.deliver(succeeded).outcome == "already_applied"
    assert payments.deliver(event("checkout.session.async_payment_succeeded",
                                  {**pending, "payment_status": "paid"})).outcome == "already_applied"
    assert payments.pool(org_id).pool_total_millicredits == credits_for(1_000) == 123_450
    assert not payments.violations()


def test_an_expired_checkout_is_marked_expired_and_credits_nothing(payments, world):
    org_id = world.org()
    sid = new_id("cs")
    recorded = payments.service.RecordCheckout(admin_pb2.RecordCheckoutRequest(
        org_id=org_id, session_id=sid, amount_minor=700, currency="usd", created_by="owner-2"))
    assert (recorded.status, recorded.credits_millicredits) == (admin_pb2.PURCHASE_STATUS_PENDING, credits_for(700))
    expired = event("checkout.session.expired", session(org_id, 700, session_id=sid, payment_status="unpaid"))
    answer = payments.deliver(expired)
    assert (answer.outcome, answer.purchase.status) == ("expired", admin_pb2.PURCHASE_STATUS_EXPIRED)
    assert payments.deliver(expired).outcome == "already_applied"
    assert payments.pool(org_id).pool_total_millicredits == 0
    assert [p.status for p in payments.purchases(org_id)] == [admin_pb2.PURCHASE_STATUS_EXPIRED]


@pytest.mark.parametrize("case", ["forged", "wrong secret", "stale", "missing header", "tampered", "no v1",
                                  "future-dated replay of a stale one"])
def test_an_unverified_event_is_invalid_argument_and_writes_nothing(payments, world, case):
    org_id = world.org()
    payload = event("checkout.session.completed", session(org_id, 100_000))
    now = int(time.time())
    signature = {
        "forged": f"t={now},v1={'0' * 64}",
        "wrong secret": sign(payload, "whsec_someone_else_entirely"),
        "stale": sign(payload, timestamp=now - 301),
        "missing header": "",
        "tampered": sign(payload.replace(b'"amount_total": 100000', b'"amount_total": 900000')),
        "no v1": sign(payload).replace("v1=", "v0="),
        "future-dated replay of a stale one": sign(payload, timestamp=now - 3600).replace(
            f"t={now - 3600}", f"t={now}"),
    }[case]
    if case == "tampered":
        payload = payload.replace(b'"amount_total": 100000', b'"amount_total": 900001')
    before = payments.counts()
    error = refused(lambda: payments.deliver(payload, signature))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert [v.field for v in bad_request(error).field_violations] == ["signature"]
    assert payments.counts() == before
    assert payments.pool(org_id).pool_total_millicredits == 0
    assert payments.deliver(payload).outcome == "credited"  # the same bytes, properly signed


def test_a_signed_body_that_is_not_an_event_is_invalid_argument(payments):
    before = payments.counts()
    for payload in (b"not json", b"\xff\xfe", b'{"id": "evt_1", "type": "x"}', b"[]"):
        error = refused(lambda payload=payload: payments.deliver(payload))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (payload, error.details())
        assert [v.field for v in bad_request(error).field_violations] == ["payload"], payload
    assert payments.counts() == before


def test_a_paid_session_this_deployment_cannot_credit_is_acknowledged_as_ignored_and_writes_nothing(payments, world):
    org_id = world.org()
    cases = [session(org_id, 1_000, currency="eur"), session("no-such-org-anywhere", 1_000),
             {**session(org_id, 1_000), "metadata": {}}, session(org_id, 0), {**session(org_id, 1_000),
                                                                             "amount_total": 10.5},
             {**session(org_id, 1_000), "object": "payment_link"}]
    before = payments.counts()
    for obj in cases:
        assert payments.deliver(event("checkout.session.completed", obj)).outcome == "ignored", obj
    assert payments.deliver(event("charge.refunded", charge_refunded(new_id("pi"), 100, 100))).outcome == "ignored"
    assert payments.counts() == before
    assert "nothing credited" in payments.authority.log_path.read_text()  # logged for an operator


def test_apply_payment_event_without_a_configured_secret_is_failed_precondition(channel, tokens, world, db):
    service = Stub(admin_pb2_grpc.CreditAdminStub(channel), tokens.service)  # the session authority: no secret
    payload = event("checkout.session.completed", session(world.org(), 1_000))
    error = refused(lambda: service.ApplyPaymentEvent(admin_pb2.ApplyPaymentEventRequest(
        payload=payload, signature=sign(payload))))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(error).reason == "PAYMENTS_NOT_CONFIGURED"


def test_record_checkout_validates_prices_itself_and_is_idempotent_per_session(payments, world):
    org_id = world.org()
    sid = new_id("cs")
    ask = admin_pb2.RecordCheckoutRequest(org_id=org_id, session_id=sid, amount_minor=1_999, currency="usd",
                                          created_by="owner-3")
    before = payments.counts()
    for field, bad in [("credits_millicredits", {"credits_millicredits": 10**15}),
                       ("credits_millicredits", {"credits_millicredits": credits_for(1_999) + 1}),
                       ("currency", {"currency": "eur"}), ("currency", {"currency": ""}),
                       ("amount_minor", {"amount_minor": 0}), ("amount_minor", {"amount_minor": -5}),
                       ("amount_minor", {"amount_minor": 10**13}), ("session_id", {"session_id": "pi_123"}),
                       ("session_id", {"session_id": "cs_a b"}), ("org_id", {"org_id": ""}),
                       ("created_by", {"created_by": "tab\there"})]:
        request = admin_pb2.RecordCheckoutRequest()
        request.CopyFrom(ask)
        for name, value in bad.items():
            setattr(request, name, value)
        error = refused(lambda request=request: payments.service.RecordCheckout(request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (bad, error.details())
        assert [v.field for v in bad_request(error).field_violations] == [field], bad
    assert payments.counts() == before
    unknown = refused(lambda: payments.service.RecordCheckout(admin_pb2.RecordCheckoutRequest(
        org_id="no-such-org-anywhere", session_id=sid, amount_minor=1, currency="usd")))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND

    first = payments.service.RecordCheckout(ask)
    assert (first.status, first.credits_millicredits) == (admin_pb2.PURCHASE_STATUS_PENDING, credits_for(1_999))
    ask.credits_millicredits = credits_for(1_999)  # the right figure is accepted, and it is a replay
    assert payments.service.RecordCheckout(ask) == first
    ask.amount_minor = 2_000
    ask.credits_millicredits = 0
    assert refused(lambda: payments.service.RecordCheckout(ask)).code() == grpc.StatusCode.ALREADY_EXISTS
    assert payments.pool(org_id).pool_total_millicredits == 0  # a checkout credits nothing


def test_list_purchases_newest_first_with_limits(payments, world, tokens, channel):
    org_id = world.org()
    sids = [new_id("cs") for _ in range(3)]
    for sid in sids:
        payments.service.RecordCheckout(admin_pb2.RecordCheckoutRequest(
            org_id=org_id, session_id=sid, amount_minor=100, currency="usd"))
    assert [p.session_id for p in payments.purchases(org_id)] == sids[::-1]
    reader = Stub(admin_pb2_grpc.CreditAdminStub(channel), tokens.read)
    assert [p.session_id for p in reader.ListPurchases(admin_pb2.ListPurchasesRequest(org_id=org_id, limit=2))
            .purchases] == sids[:0:-1]
    for bad in (-1, 1001):
        error = refused(lambda bad=bad: reader.ListPurchases(admin_pb2.ListPurchasesRequest(org_id=org_id,
                                                                                              limit=bad)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused(lambda: reader.ListPurchases(admin_pb2.ListPurchasesRequest(org_id="no-such-org"))).code() \
        == grpc.StatusCode.NOT_FOUND
