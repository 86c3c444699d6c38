"""Refunds (charge.refunded) take back the refunded share of a purchase's credits, rounded down, as one
negative pool adjustment per new cumulative amount; a refund of credits already allocated or spent is still
recorded, the pool overdrawn by at most the refund and the purchase flagged; a threshold it crosses fires."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from payment_events import Payments, charge_refunded, credits_for, session
from stripe_events import event

from credit.v1 import admin_pb2, authority_pb2


def bought(payments: Payments, org_id: str, amount: int) -> dict:
    paid = session(org_id, amount)
    assert payments.deliver(event("checkout.session.completed", paid)).outcome == "credited"
    return paid


def refund(payments: Payments, paid: dict, cumulative: int) -> admin_pb2.ApplyPaymentEventResponse:
    return payments.deliver(event("charge.refunded", charge_refunded(paid["payment_intent"], paid["amount_total"],
                                                                     cumulative)))


def adjustments(payments: Payments, org_id: str) -> list[int]:
    return [delta for kind, delta, _ in payments.ledger(org_id) if kind == "adjustment"]


def test_partial_then_full_refunds_take_back_their_share_once_each(payments, world):
    org_id = world.org()
    paid = bought(payments, org_id, 1_001)  # 123,573 mc (123.45 per cent, rounded down)
    credits = credits_for(1_001)
    first = refund(payments, paid, 300)
    assert (first.outcome, first.purchase.status) == ("refunded", admin_pb2.PURCHASE_STATUS_PARTIALLY_REFUNDED)
    # 300/1001 of 123,573 is 37,034.6: rounded down (300 cents bought 37,035 mc; the refund never takes more)
    assert first.purchase.refunded_millicredits == credits * 300 // 1_001 == 37_034
    assert refund(payments, paid, 300).outcome == "already_applied"  # a redelivery of the same figure
    assert refund(payments, paid, 100).outcome == "already_applied"  # an older event, delivered late
    full = refund(payments, paid, 1_001)
    assert (full.outcome, full.purchase.status) == ("refunded", admin_pb2.PURCHASE_STATUS_REFUNDED)
    assert full.purchase.refunded_millicredits == credits
    assert refund(payments, paid, 5_000).outcome == "already_applied"  # more than was paid: nothing more
    assert adjustments(payments, org_id) == [-37_034, -(credits - 37_034)]
    assert payments.pool(org_id).pool_total_millicredits == 0
    note = payments.ledger(org_id)[-1][2]
    assert f"stripe:{paid['id']}" in note and paid["payment_intent"] in note
    assert not payments.violations()


def test_a_refund_of_credits_already_allocated_and_spent_overdraws_the_pool_by_at_most_the_refund(
        payments, world, spend, tokens):
    org_id = world.org()
    user = world.user()
    world.member(org_id, user)
    paid = bought(payments, org_id, 1_000)  # 123,450 mc
    other = bought(payments, org_id, 200)  # 24,690 mc: 148,140 in the pool
    world.allocate(org_id, user, 140_000)  # 8,140 unallocated
    hold = spend.Reserve(authority_pb2.ReserveRequest(request_id=uuid.uuid4().hex, user_id=user, org_id=org_id,
                                                      amount_millicredits=100_000))
    spend.Commit(authority_pb2.CommitRequest(reservation_id=hold.reservation_id, amount_millicredits=100_000))

    answer = refund(payments, paid, 1_000)  # takes back 123,450: 115,310 more than was unallocated
    assert (answer.outcome, answer.purchase.overdrawn) == ("refunded", True)
    pool = payments.pool(org_id)
    assert pool.pool_total_millicredits == 24_690 and pool.allocated_millicredits == 140_000
    overdraft = 140_000 - 24_690
    assert 0 < overdraft <= answer.purchase.refunded_millicredits
    assert [tuple(r) for r in payments.query("SELECT overdrawn_mc FROM org_pools WHERE org_id = $1", org_id)] == \
        [(overdraft,)]
    assert not payments.violations()

    # The overdrawn pool: no allocation may grow, one may shrink, and a purchase heals the overdraft.
    error = pytest.raises(grpc.RpcError, world.allocate, org_id, user, 140_001).value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert world.allocate(org_id, user, 120_000).allocation_millicredits == 120_000
    assert refund(payments, other, 100).purchase.overdrawn  # a second refund deepens it: flagged too
    bought(payments, org_id, 10_000)
    assert [tuple(r) for r in payments.query("SELECT overdrawn_mc FROM org_pools WHERE org_id = $1", org_id)] == \
        [(0,)]
    assert not payments.violations()


def test_a_refund_within_the_unallocated_credits_is_not_flagged(payments, world):
    org_id = world.org()
    paid = bought(payments, org_id, 500)
    answer = refund(payments, paid, 250)
    assert (answer.outcome, answer.purchase.overdrawn) == ("refunded", False)
    assert payments.pool(org_id).pool_total_millicredits == credits_for(500) - credits_for(500) * 250 // 500


@given(amount=st.integers(1, 100_000), cumulative=st.lists(st.integers(0, 120_000), min_size=1, max_size=6))
@settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_any_sequence_of_cumulative_refunds_takes_back_the_largest_share_once(payments, world, amount, cumulative):
    """Refund events in any order, repeated or stale: the credits taken back are the largest cumulative
    refunded share (capped at what was paid), rounded down; each adjustment is negative and comes from an event
    whose cumulative figure was the largest so far."""
    org_id = world.org()
    paid = bought(payments, org_id, amount)
    credits = credits_for(amount)
    outcomes = [refund(payments, paid, c).outcome if c else "skipped" for c in cumulative]
    largest = min(max(cumulative), amount)
    taken = credits * largest // amount
    assert -sum(adjustments(payments, org_id)) == taken
    assert all(delta < 0 for delta in adjustments(payments, org_id))
    new_maxima = sum(1 for i, c in enumerate(cumulative) if c and min(c, amount) > min(max(cumulative[:i] or [0]),
                                                                                         amount))
    assert outcomes.count("refunded") == new_maxima
    assert len(adjustments(payments, org_id)) <= new_maxima
    assert payments.pool(org_id).pool_total_millicredits == credits - taken
    [purchase] = payments.purchases(org_id)
    assert purchase.refunded_millicredits == taken


def test_a_refund_that_crosses_a_pool_threshold_fires_the_alert(payments, world):
    org_id = world.org()
    paid = bought(payments, org_id, 1_000)  # 123,450 mc
    payments.operator.CreateAlertThreshold(admin_pb2.CreateAlertThresholdRequest(
        org_id=org_id, kind=admin_pb2.ALERT_THRESHOLD_KIND_ABSOLUTE, value=50_000))
    refund(payments, paid, 800)  # 24,690 left: at or below 50,000
    deadline = time.monotonic() + 20
    while not (events := payments.operator.ListAlertEvents(admin_pb2.ListAlertEventsRequest(org_id=org_id)).events):
        assert time.monotonic() < deadline, "the refund's threshold crossing fired no alert"
        time.sleep(0.1)
    left = credits_for(1_000) - credits_for(1_000) * 800 // 1_000
    assert len(events) == 1 and events[0].remaining_millicredits == left
    assert not payments.violations()
