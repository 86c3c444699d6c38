"""Low-balance alerts: a commit that crosses a threshold sends exactly one
signed webhook; crossing back re-arms; failed deliveries are retried with
backoff and every attempt is recorded; commits of orgs without thresholds
write nothing."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
import uuid
from datetime import datetime, timedelta

import asyncpg
import grpc
import pytest
from conftest import Stub, free_port
from helpers import reserve_request
from test_forecast import DAY, MICROSECOND, Charge, write_charges

from credit.v1 import admin_pb2, admin_pb2_grpc, authority_pb2, authority_pb2_grpc
from credit_service.jobs.alert_delivery import verify_signature
from credit_service.money import format_credits
from credit_service.reports import DEFAULT_WINDOW_DAYS

from .conftest import WebhookReceiver

ABSOLUTE = admin_pb2.ALERT_THRESHOLD_KIND_ABSOLUTE
PERCENT = admin_pb2.ALERT_THRESHOLD_KIND_PERCENT


def spend_mc(spend, user_id: str, org_id: str, amount: int) -> authority_pb2.CommitResponse:
    hold = spend.Reserve(reserve_request(user_id, amount, org_id))
    return spend.Commit(authority_pb2.CommitRequest(reservation_id=hold.reservation_id, amount_millicredits=amount))


def webhook(admin, org_id: str, receiver: WebhookReceiver) -> str:
    secret = secrets.token_urlsafe(24)
    admin.SetAlertWebhook(admin_pb2.SetAlertWebhookRequest(org_id=org_id, url=receiver.url, secret=secret))
    return secret


def events(admin, org_id: str, **kwargs) -> list[admin_pb2.AlertEvent]:
    return list(admin.ListAlertEvents(admin_pb2.ListAlertEventsRequest(org_id=org_id, **kwargs)).events)


def wait_status(admin, org_id: str, status: int, count: int = 1, timeout: float = 20) -> list[admin_pb2.AlertEvent]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in events(admin, org_id) if e.status == status]
        if len(found) >= count:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no {count} alerts in status {status}: {events(admin, org_id)}")


def threshold(admin, org_id: str, user_id: str = "", kind=ABSOLUTE, value: int = 0) -> admin_pb2.AlertThreshold:
    return admin.CreateAlertThreshold(admin_pb2.CreateAlertThresholdRequest(
        org_id=org_id, user_id=user_id, kind=kind, value=value)).threshold


def assert_forecast(body: dict, used_in_window: int) -> None:
    """The alert's forecast: the usage of the DEFAULT_WINDOW_DAYS before it fired per day, rounded up, and when
    the remaining credits it reports run out at that rate, counted from when it fired (to the microsecond)."""
    rate = -(-used_in_window // DEFAULT_WINDOW_DAYS)
    runs_out = datetime.fromisoformat(body["fired_at"]) + timedelta(
        microseconds=body["remaining_millicredits"] * (DAY // MICROSECOND) // rate)
    forecast = body["forecast"]
    assert (forecast["window_days"], forecast["burn_rate_millicredits_per_day"],
            forecast["burn_rate_credits_per_day"]) == (DEFAULT_WINDOW_DAYS, rate, format_credits(rate))
    assert datetime.fromisoformat(forecast["runs_out_at"]) == runs_out
    assert f"runs out on {runs_out:%Y-%m-%d %H:%M} UTC" in forecast["summary"]


def test_a_commit_crossing_an_allocation_threshold_sends_exactly_one_signed_alert(
        console_authority, world, admin, spend, receiver):
    org_id, user_id = world.funded_member(allocation_mc=10_000)
    secret = webhook(admin, org_id, receiver)
    created = threshold(admin, org_id, user_id, ABSOLUTE, 3_000)
    assert created.state == admin_pb2.ALERT_THRESHOLD_STATE_ARMED
    assert (created.remaining_millicredits, created.threshold_millicredits) == (10_000, 3_000)

    above = spend_mc(spend, user_id, org_id, 6_000)  # 4,000 left: above
    time.sleep(0.5)
    assert receiver.received == [] and events(admin, org_id) == []
    crossing = spend_mc(spend, user_id, org_id, 1_500)  # 2,500 left: crosses
    for _ in range(3):  # more spending below the threshold: no second alert
        spend_mc(spend, user_id, org_id, 100)

    [call] = receiver.wait_for(1)
    time.sleep(1.5)  # both authority processes had time to (wrongly) send another
    assert len(receiver.received) == 1
    assert call.path == "/hooks/credits"
    assert call.headers["content-type"] == "application/json"
    expected = "sha256=" + hmac.new(secret.encode(), call.body, hashlib.sha256).hexdigest()
    assert call.headers["x-credit-signature"] == expected
    assert verify_signature(secret, call.body, call.headers["x-credit-signature"])
    assert not verify_signature("another-secret-of-16+", call.body, call.headers["x-credit-signature"])
    body = call.json()
    assert body["type"] == "credit.low_balance" and body["scope"] == "allocation"
    assert (body["org_id"], body["user_id"]) == (org_id, user_id)
    assert body["remaining_millicredits"] == 2_500 and body["remaining_credits"] == "2.500"
    assert body["threshold"] == {"id": created.threshold_id, "kind": "absolute", "value": 3_000,
                                 "millicredits": 3_000, "credits": "3.000"}
    assert call.headers["x-credit-event-id"] == body["id"]
    # The spending after the alert fired is not in its forecast.
    assert_forecast(body, above.charged_millicredits + crossing.charged_millicredits)

    [event] = wait_status(admin, org_id, admin_pb2.ALERT_DELIVERY_STATUS_DELIVERED)
    assert event.attempts == 1 and event.remaining_millicredits == 2_500
    assert [(d.attempt, d.status_code, d.error) for d in event.deliveries] == [(1, 200, "")]
    [listed] = admin.ListAlertThresholds(admin_pb2.ListAlertThresholdsRequest(org_id=org_id)).thresholds
    assert listed.state == admin_pb2.ALERT_THRESHOLD_STATE_FIRED and listed.remaining_millicredits == 2_200


def test_crossing_back_re_arms_and_the_next_crossing_alerts_again(console_authority, world, admin, spend,
                                                                  receiver):
    org_id, user_id = world.funded_member(allocation_mc=10_000, pool_mc=50_000)
    webhook(admin, org_id, receiver)
    threshold(admin, org_id, user_id, PERCENT, 20)  # 20 % of the allocation
    spend_mc(spend, user_id, org_id, 8_500)  # 15 % left: fires
    receiver.wait_for(1)

    world.allocate(org_id, user_id, 20_000)  # 11,500 of 20,000 left: above again, re-armed (no alert)
    [state] = admin.ListAlertThresholds(admin_pb2.ListAlertThresholdsRequest(org_id=org_id)).thresholds
    assert state.state == admin_pb2.ALERT_THRESHOLD_STATE_ARMED and state.threshold_millicredits == 4_000
    spend_mc(spend, user_id, org_id, 8_000)  # 3,500 left, below 4,000: fires again
    calls = receiver.wait_for(2)
    time.sleep(1)
    assert len(receiver.received) == 2
    assert [c.json()["remaining_millicredits"] for c in calls] == [1_500, 3_500]


def test_a_pool_threshold_fires_once_across_members_and_a_top_up_re_arms_it(console_authority, world, admin,
                                                                             spend, receiver):
    org_id = world.org(100_000)
    members = [world.user() for _ in range(4)]
    for user_id in members:
        world.member(org_id, user_id, 25_000)
    webhook(admin, org_id, receiver)
    created = threshold(admin, org_id, "", ABSOLUTE, 30_000)
    assert created.user_id == "" and created.remaining_millicredits == 100_000
    for user_id in members:  # 4 × 18,000 = 72,000 used: 28,000 left, crossed on the fourth
        spend_mc(spend, user_id, org_id, 18_000)
    for user_id in members:
        spend_mc(spend, user_id, org_id, 1_000)
    [call] = receiver.wait_for(1)
    time.sleep(1.5)
    assert len(receiver.received) == 1
    assert call.json()["scope"] == "pool" and call.json()["user_id"] is None
    assert call.json()["remaining_millicredits"] in (28_000, 27_000, 26_000, 25_000, 24_000)

    world.top_up(org_id, 50_000)  # 74,000 left: re-armed
    deadline = time.monotonic() + 10
    while admin.ListAlertThresholds(admin_pb2.ListAlertThresholdsRequest(org_id=org_id)).thresholds[0].state \
            != admin_pb2.ALERT_THRESHOLD_STATE_ARMED:
        assert time.monotonic() < deadline, "top-up did not re-arm the pool threshold"
        time.sleep(0.1)


def test_concurrent_commits_crossing_a_pool_threshold_alert_exactly_once(console_authority, authority, world, admin,
                                                                         tokens, receiver):
    """Commits of 8 members race through both authority processes (batched): one alert."""
    org_id = world.org(200_000)
    members = [world.user() for _ in range(8)]
    for user_id in members:
        world.member(org_id, user_id, 25_000)
    webhook(admin, org_id, receiver)
    threshold(admin, org_id, "", PERCENT, 50)

    async def burst():
        channels = [grpc.aio.insecure_channel(a.addr) for a in (authority, console_authority)]
        stubs = [Stub(authority_pb2_grpc.CreditAuthorityStub(c), tokens.spend) for c in channels]

        async def one(i, user_id):
            stub = stubs[i % 2]
            for _ in range(5):
                hold = await stub.Reserve(reserve_request(user_id, 3_000, org_id))
                await stub.Commit(authority_pb2.CommitRequest(reservation_id=hold.reservation_id,
                                                              amount_millicredits=3_000))
        try:
            await asyncio.gather(*(one(i, u) for i, u in enumerate(members)))
        finally:
            for channel in channels:
                await channel.close()

    asyncio.run(burst())  # 120,000 of 200,000 used in parallel: crosses 50 % once
    receiver.wait_for(1)
    time.sleep(2)
    assert len(receiver.received) == 1
    assert receiver.received[0].json()["remaining_millicredits"] <= 100_000


def test_a_failed_delivery_is_retried_with_backoff_and_every_attempt_recorded(console_authority, world, admin,
                                                                             spend, receiver, database_url):
    org_id, user_id = world.funded_member(allocation_mc=5_000)
    # Earlier usage, with known timestamps: three days ago (in the alert's forecast window), ten days ago (not).
    history = [Charge(user_id, org_id, 500, 3 * DAY), Charge(user_id, org_id, 1_000, 10 * DAY)]
    write_charges(database_url, history)
    secret = webhook(admin, org_id, receiver)
    receiver.statuses = [500, 503]
    threshold(admin, org_id, user_id, ABSOLUTE, 1_000)
    crossing = spend_mc(spend, user_id, org_id, 3_000)  # 500 left
    calls = receiver.wait_for(3, timeout=30)
    assert len({c.body for c in calls}) == 1, "every attempt sends the same body"
    in_window = sum(c.amount for c in history if c.ago < DEFAULT_WINDOW_DAYS * DAY)
    assert_forecast(calls[0].json(), in_window + crossing.charged_millicredits)
    assert [c.headers["x-credit-delivery-attempt"] for c in calls] == ["1", "2", "3"]
    assert all(verify_signature(secret, c.body, c.headers["x-credit-signature"]) for c in calls)
    [event] = wait_status(admin, org_id, admin_pb2.ALERT_DELIVERY_STATUS_DELIVERED)
    assert event.attempts == 3
    assert [(d.attempt, d.status_code) for d in event.deliveries] == [(1, 500), (2, 503), (3, 200)]
    assert event.deliveries[0].error == "http_status_5xx"  # a category, not the receiver's text
    gaps = [(b.attempted_at.ToDatetime() - a.attempted_at.ToDatetime()).total_seconds()
            for a, b in zip(event.deliveries, event.deliveries[1:], strict=False)]
    # Exponential backoff: attempt n waits at least base · 2^(n-1) (± 20 % jitter). Both authority
    # processes deliver (the session's with the default base of 1 s, this folder's with 0.3 s).
    assert gaps[0] >= 0.3 * 0.8 and gaps[1] >= 0.6 * 0.8, f"backoff too short: {gaps}"


def test_an_unreachable_webhook_is_recorded_and_an_org_without_webhook_marks_no_webhook(
        console_authority, world, admin, spend):
    org_id, user_id = world.funded_member(allocation_mc=5_000)
    threshold(admin, org_id, user_id, ABSOLUTE, 1_000)
    spend_mc(spend, user_id, org_id, 4_500)
    [event] = wait_status(admin, org_id, admin_pb2.ALERT_DELIVERY_STATUS_NO_WEBHOOK)
    assert event.attempts == 0

    org_id, user_id = world.funded_member(allocation_mc=5_000)
    dead = f"http://127.0.0.1:{_closed_port()}/hook"
    admin.SetAlertWebhook(admin_pb2.SetAlertWebhookRequest(org_id=org_id, url=dead, secret="s" * 20))
    threshold(admin, org_id, user_id, ABSOLUTE, 1_000)
    spend_mc(spend, user_id, org_id, 4_500)
    deadline = time.monotonic() + 20
    while not (found := events(admin, org_id)) or found[0].attempts < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert found[0].status == admin_pb2.ALERT_DELIVERY_STATUS_PENDING
    assert found[0].last_error == "connection_failed"  # a category: no socket error text to probe a network with
    assert found[0].deliveries[0].status_code == 0


def _closed_port() -> int:
    return free_port()


def test_thresholds_created_below_are_fired_without_alert_and_commits_without_thresholds_write_nothing(
        console_authority, world, admin, spend):
    org_id, user_id = world.funded_member(allocation_mc=5_000)
    spend_mc(spend, user_id, org_id, 4_800)
    created = threshold(admin, org_id, user_id, ABSOLUTE, 1_000)
    assert created.state == admin_pb2.ALERT_THRESHOLD_STATE_FIRED
    spend_mc(spend, user_id, org_id, 100)
    time.sleep(0.5)
    assert events(admin, org_id) == []

    plain_org, plain_user = world.funded_member(allocation_mc=5_000)
    spend_mc(spend, plain_user, plain_org, 4_900)
    assert events(admin, plain_org) == []


def test_only_watched_allocations_run_the_commit_trigger(console_authority, world, admin, database_url):
    """alert_watch (tested in the trigger's WHEN) is set exactly where a threshold looks, also for new members."""
    import asyncpg

    org_id = world.org(100_000)
    a, b, c = world.user(), world.user(), world.user()
    world.member(org_id, a, 10_000)
    world.member(org_id, b, 10_000)
    world.member(org_id, c)  # no allocation row yet

    def watched() -> dict[str, bool]:
        async def read():
            conn = await asyncpg.connect(database_url)
            try:
                rows = await conn.fetch("SELECT user_id, alert_watch FROM allocations WHERE org_id = $1", org_id)
            finally:
                await conn.close()
            return {r["user_id"]: r["alert_watch"] for r in rows}
        return asyncio.run(read())

    assert watched() == {a: False, b: False}
    on_a = threshold(admin, org_id, a, ABSOLUTE, 100)
    assert watched() == {a: True, b: False}
    pool = threshold(admin, org_id, "", PERCENT, 10)
    assert watched() == {a: True, b: True}
    world.allocate(org_id, c, 5_000)  # a new allocation in a watched org
    assert watched() == {a: True, b: True, c: True}
    admin.DeleteAlertThreshold(admin_pb2.DeleteAlertThresholdRequest(org_id=org_id, threshold_id=pool.threshold_id))
    assert watched() == {a: True, b: False, c: False}
    admin.DeleteAlertThreshold(admin_pb2.DeleteAlertThresholdRequest(org_id=org_id, threshold_id=on_a.threshold_id))
    assert watched() == {a: False, b: False, c: False}


def test_alert_rpcs_validate_and_enforce_roles(console_authority, world, admin, channel, tokens):
    org_id, user_id = world.funded_member(allocation_mc=5_000)
    outsider = world.user()
    bad = [
        admin_pb2.SetAlertWebhookRequest(org_id=org_id, url="ftp://example.com/x", secret="s" * 20),
        admin_pb2.SetAlertWebhookRequest(org_id=org_id, url="http://example.com/x", secret="short"),
        admin_pb2.SetAlertWebhookRequest(org_id=org_id, url="http://u:p@example.com/x", secret="s" * 20),
        admin_pb2.SetAlertWebhookRequest(org_id=org_id, url="http://exa mple.com/", secret="s" * 20),
        admin_pb2.SetAlertWebhookRequest(org_id=org_id, url="", secret="s" * 20),
        admin_pb2.CreateAlertThresholdRequest(org_id=org_id, kind=PERCENT, value=101),
        admin_pb2.CreateAlertThresholdRequest(org_id=org_id, kind=ABSOLUTE, value=-1),
        admin_pb2.CreateAlertThresholdRequest(org_id=org_id, value=10),
        admin_pb2.DeleteAlertThresholdRequest(org_id=org_id, threshold_id=0),
        admin_pb2.ListAlertEventsRequest(org_id=org_id, limit=5_000),
    ]
    for request in bad:
        method = {"SetAlertWebhookRequest": admin.SetAlertWebhook,
                  "CreateAlertThresholdRequest": admin.CreateAlertThreshold,
                  "DeleteAlertThresholdRequest": admin.DeleteAlertThreshold,
                  "ListAlertEventsRequest": admin.ListAlertEvents}[type(request).__name__]
        with pytest.raises(grpc.RpcError) as raised:
            method(request)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
    with pytest.raises(grpc.RpcError) as raised:
        admin.CreateAlertThreshold(admin_pb2.CreateAlertThresholdRequest(org_id=org_id, user_id=outsider,
                                                                         kind=ABSOLUTE, value=1))
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as raised:
        admin.ListAlertThresholds(admin_pb2.ListAlertThresholdsRequest(org_id=f"no-such-{uuid.uuid4().hex[:6]}"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as raised:
        admin.DeleteAlertThreshold(admin_pb2.DeleteAlertThresholdRequest(org_id=org_id, threshold_id=987654321))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND

    # The webhook's secret is write-only; the read token can read, not write.
    admin.SetAlertWebhook(admin_pb2.SetAlertWebhookRequest(org_id=org_id, url="https://hooks.example.test/h",
                                                           secret="s" * 20))
    reader = Stub(admin_pb2_grpc.CreditAdminStub(channel), tokens.read)
    got = reader.GetAlertWebhook(admin_pb2.GetAlertWebhookRequest(org_id=org_id)).webhook
    assert (got.url, got.has_secret) == ("https://hooks.example.test/h", True)
    assert "s" * 20 not in str(got)
    with pytest.raises(grpc.RpcError) as raised:
        reader.SetAlertWebhook(admin_pb2.SetAlertWebhookRequest(org_id=org_id, url=""))
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    spender = Stub(admin_pb2_grpc.CreditAdminStub(channel), tokens.spend)
    with pytest.raises(grpc.RpcError) as raised:
        spender.CreateAlertThreshold(admin_pb2.CreateAlertThresholdRequest(org_id=org_id, kind=ABSOLUTE, value=1))
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # Removing the webhook.
    removed = admin.SetAlertWebhook(admin_pb2.SetAlertWebhookRequest(org_id=org_id, url="")).webhook
    assert (removed.url, removed.has_secret) == ("", False)


async def test_with_nothing_pending_the_alert_worker_waits_instead_of_polling(database_url):
    """next_alert_due_seconds is None when no alert is pending (the worker then sleeps its
    poll interval); it once answered 0, so every idle authority polled 100 times a second."""
    from credit_service.migrate import migrate
    from credit_service.storage import Storage

    name = f"alerts_{uuid.uuid4().hex[:8]}"
    admin_conn = await asyncpg.connect(database_url)
    await admin_conn.execute(f'CREATE DATABASE "{name}"')
    url = database_url.rsplit("/", 1)[0] + "/" + name
    try:
        await migrate(url)
        storage = await Storage.connect(url, 1, 2)
        try:
            assert await storage.next_alert_due_seconds() is None
            conn = await asyncpg.connect(url)
            await conn.execute("INSERT INTO organizations (org_id) VALUES ('o')")
            insert = """INSERT INTO alert_events (org_id, threshold_id, kind, value, threshold_mc, limit_mc,
                                                  remaining_mc, next_attempt_at)
                        VALUES ('o', 1, 'absolute', 1, 1, 1, 1, now() + make_interval(secs => $1))"""
            await conn.execute(insert, 30.0)
            assert 25 < await storage.next_alert_due_seconds() <= 30
            await conn.execute(insert, -30.0)
            assert await storage.next_alert_due_seconds() == 0.0
            await conn.close()
        finally:
            await storage.close()
    finally:
        await admin_conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin_conn.close()
