"""Webhooks cannot be pointed at the authority's own network (issue 17): refused at save for non-public
addresses, refused again at delivery when the name resolves differently by then (before any connection),
and a receiver that drips its answer is cut off at the total deadline while another org's alert arrives.
No test here connects to anything but 127.0.0.1: the resolver is replaced in-process."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import grpc
import pytest
from cryptography.fernet import Fernet

from credit.v1 import admin_pb2
from credit_service.errors import InvalidArgument
from credit_service.jobs import alert_delivery, webhook_post
from credit_service.jobs.alert_delivery import AlertWorker
from credit_service.migrate import migrate
from credit_service.secret_box import SecretBox
from credit_service.settings import AlertSettings
from credit_service.storage import Storage
from credit_service.webhook_policy import require_webhook_target

REFUSED_AT_SAVE = ["https://localhost/h", "https://127.0.0.2/h", "https://[::1]/h", "https://10.1.2.3/h",
                   "https://172.16.0.9/h", "https://192.168.1.1/h", "https://169.254.169.254/latest/meta-data",
                   "https://[fd00:ec2::254]/h", "https://[fe80::1]/h", "https://224.0.0.1/h", "https://0.0.0.0/h",
                   "https://[::ffff:10.0.0.1]/h", "http://198.51.100.7/h"]


def test_webhooks_to_non_public_addresses_or_plain_http_are_refused_at_save(authority, world, admin):
    org_id = world.org(1_000)
    for url in REFUSED_AT_SAVE:
        with pytest.raises(grpc.RpcError) as raised:
            admin.SetAlertWebhook(admin_pb2.SetAlertWebhookRequest(org_id=org_id, url=url, secret="s" * 20))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, url
        assert raised.value.details().startswith("url:"), (url, raised.value.details())


def _resolves_to(address: str):
    async def resolver(host: str, port: int) -> list[str]:
        return [address]
    return resolver


@pytest.fixture
async def alert_db(database_url):
    name = f"hooks_{uuid.uuid4().hex[:8]}"
    admin_conn = await asyncpg.connect(database_url)
    await admin_conn.execute(f'CREATE DATABASE "{name}"')
    url = database_url.rsplit("/", 1)[0] + "/" + name
    try:
        await migrate(url)
        storage = await Storage.connect(url, 1, 4)
        storage.secret_box = SecretBox([Fernet.generate_key()])
        conn = await asyncpg.connect(url)
        try:
            yield url, storage, conn
        finally:
            await conn.close()
            await storage.close()
    finally:
        await admin_conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin_conn.close()


async def _due_alert(storage: Storage, conn, org_id: str, url: str) -> None:
    await conn.execute("INSERT INTO organizations (org_id) VALUES ($1)", org_id)
    await conn.execute("INSERT INTO org_pools (org_id) VALUES ($1)", org_id)
    await storage.set_alert_webhook(org_id, url, "s" * 24)
    await conn.execute("""INSERT INTO alert_events (org_id, threshold_id, kind, value, threshold_mc, limit_mc,
                                                    remaining_mc, next_attempt_at)
                          VALUES ($1, 1, 'absolute', 1, 1, 1, 1, now() - interval '1 second')""", org_id)


async def _more_due_alerts(conn, org_id: str, count: int) -> None:
    """`count` more due alerts of an org _due_alert made (thresholds 2, 3, …)."""
    for threshold in range(2, 2 + count):
        await conn.execute("""INSERT INTO alert_events (org_id, threshold_id, kind, value, threshold_mc, limit_mc,
                                                        remaining_mc, next_attempt_at)
                              VALUES ($1, $2, 'absolute', 1, 1, 1, 1, now() - interval '1 second')""",
                           org_id, threshold)


async def _errors(conn, org_id: str) -> list[str]:
    return [r["error"] for r in await conn.fetch("SELECT error FROM alert_deliveries WHERE org_id = $1", org_id)]


async def test_a_name_resolving_to_a_private_address_at_delivery_is_refused_before_any_connect(
        alert_db, monkeypatch):
    url, storage, conn = alert_db
    hook = "https://hooks.rebinding.test/alert"
    await require_webhook_target(hook, frozenset(), _resolves_to("93.184.215.14"))  # public at save
    with pytest.raises(InvalidArgument):
        await require_webhook_target(hook, frozenset(), _resolves_to("10.0.0.7"))
    await _due_alert(storage, conn, "rebound", hook)
    connects: list[tuple] = []

    async def no_connect(*args, **kwargs):
        connects.append(args)
        raise AssertionError("connected")
    monkeypatch.setattr(webhook_post.asyncio, "open_connection", no_connect)
    for private in ("10.0.0.7", "127.0.0.1", "169.254.169.254", "fd00:ec2::254"):
        worker = AlertWorker(url, storage, AlertSettings(max_attempts=10), _resolves_to(private))
        await conn.execute("UPDATE alert_events SET next_attempt_at = now() - interval '1 second', lease_until = NULL")
        await worker.run_once()
    assert connects == []
    assert await _errors(conn, "rebound") == ["refused_address"] * 4


async def _drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(65536)
    try:
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(1)
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


def _receiver(arrived: list[float]):
    """A webhook receiver that answers 204 at once, noting when each alert arrived."""
    async def quick(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        arrived.append(time.monotonic())
        writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()
    return quick


async def test_a_dripping_receiver_is_cut_off_at_the_deadline_while_another_orgs_alert_arrives(alert_db):
    url, storage, conn = alert_db
    arrived: list[float] = []

    drip = await asyncio.start_server(_drip, "127.0.0.1", 0)
    fine = await asyncio.start_server(_receiver(arrived), "127.0.0.1", 0)
    try:
        await _due_alert(storage, conn, "dripping", f"http://127.0.0.1:{drip.sockets[0].getsockname()[1]}/h")
        await _due_alert(storage, conn, "waiting", f"http://127.0.0.1:{fine.sockets[0].getsockname()[1]}/h")
        deadline = 2.0
        worker = AlertWorker(url, storage, AlertSettings(timeout_seconds=deadline, webhook_http_hosts="127.0.0.1"))
        started = time.monotonic()
        await worker.run_once()
        took = time.monotonic() - started
    finally:
        drip.close()
        fine.close()
    assert took < deadline + 3, f"the dripping delivery was not cut off at its deadline: {took:.1f}s"
    assert await _errors(conn, "dripping") == ["timeout"]
    assert await _errors(conn, "waiting") == [""]
    assert arrived and arrived[0] - started < deadline, "the other org's alert waited for the dripping one"


async def test_an_alert_that_falls_due_while_a_dripping_delivery_is_in_flight_is_not_held_up_by_it(alert_db):
    """The running worker does not wait for a pass's deliveries before the next: an alert queued while another
    org's receiver is dripping is sent at the next look, long before the dripping one's deadline."""
    url, storage, conn = alert_db
    arrived: list[float] = []

    drip = await asyncio.start_server(_drip, "127.0.0.1", 0)
    fine = await asyncio.start_server(_receiver(arrived), "127.0.0.1", 0)
    deadline = 8.0
    worker = AlertWorker(url, storage, AlertSettings(timeout_seconds=deadline, webhook_http_hosts="127.0.0.1",
                                                     poll_seconds=0.2))
    running = asyncio.create_task(worker.run())
    try:
        await _due_alert(storage, conn, "dripping-first", f"http://127.0.0.1:{drip.sockets[0].getsockname()[1]}/h")
        leased = "SELECT lease_until IS NOT NULL FROM alert_events WHERE org_id = 'dripping-first'"
        while not await conn.fetchval(leased):
            await asyncio.sleep(0.05)  # the dripping delivery is under way
        queued = time.monotonic()
        await _due_alert(storage, conn, "queued-later", f"http://127.0.0.1:{fine.sockets[0].getsockname()[1]}/h")
        while not arrived and time.monotonic() - queued < deadline + 5:
            await asyncio.sleep(0.05)
        still_dripping = await _errors(conn, "dripping-first") == []
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        drip.close()
        fine.close()
    assert arrived, "the alert queued later never arrived"
    assert still_dripping, "the dripping delivery ended before the later alert arrived: the test proved nothing"
    assert arrived[0] - queued < deadline / 2, f"the later alert waited {arrived[0] - queued:.1f}s for the dripping one"


async def test_one_orgs_backlog_takes_no_more_than_its_share_and_a_saturated_worker_does_not_spin(alert_db):
    """An org with many due alerts and a dripping receiver is claimed at most CREDIT_ALERT_MAX_CONCURRENT_PER_ORG
    at a time, so the worker's other slots stay free for other orgs (whose alert arrives at once); while every
    slot is taken the worker waits for a delivery to end instead of polling the database."""
    url, storage, conn = alert_db
    arrived: list[float] = []
    drip = await asyncio.start_server(_drip, "127.0.0.1", 0)
    fine = await asyncio.start_server(_receiver(arrived), "127.0.0.1", 0)
    await _due_alert(storage, conn, "backlog", f"http://127.0.0.1:{drip.sockets[0].getsockname()[1]}/h")
    await _more_due_alerts(conn, "backlog", 9)
    looks_at_checks = 0
    process = storage.process_alert_checks

    async def counted(*args, **kwargs):
        nonlocal looks_at_checks
        looks_at_checks += 1
        return await process(*args, **kwargs)
    storage.process_alert_checks = counted  # type: ignore[method-assign]  # the real query, counted: one a pass
    deadline = 6.0
    settings = AlertSettings(timeout_seconds=deadline, webhook_http_hosts="127.0.0.1", poll_seconds=0.2,
                             max_in_flight=4, max_concurrent_per_org=2)
    worker = AlertWorker(url, storage, settings)
    running = asyncio.create_task(worker.run())
    try:
        leased = "SELECT count(*) FROM alert_events WHERE org_id = 'backlog' AND lease_until IS NOT NULL"
        while await conn.fetchval(leased) < 2:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        backlog_leased = await conn.fetchval(leased)
        queued = time.monotonic()
        await _due_alert(storage, conn, "other", f"http://127.0.0.1:{fine.sockets[0].getsockname()[1]}/h")
        while not arrived and time.monotonic() - queued < deadline + 5:
            await asyncio.sleep(0.05)
        # Saturate: every slot a dripping delivery (two more orgs of the backlog's kind), then count the looks.
        for org in ("backlog-2", "backlog-3"):
            await _due_alert(storage, conn, org, f"http://127.0.0.1:{drip.sockets[0].getsockname()[1]}/h")
        await asyncio.sleep(0.5)
        saturated, before = len(worker._in_flight), looks_at_checks
        await asyncio.sleep(2)
        looks = looks_at_checks - before
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        drip.close()
        fine.close()
    assert backlog_leased == 2, f"{backlog_leased} of one org's alerts claimed at once (at most 2)"
    assert arrived and arrived[0] - queued < deadline / 2, "another org's alert waited behind the backlog"
    assert saturated == 4
    assert looks <= 20, f"{looks} passes in 2 s while saturated (poll 0.2 s): the worker spins instead of waiting"


def test_the_alert_worker_uses_the_policy_client():
    assert alert_delivery.post is webhook_post.post


async def test_an_orgs_deliveries_in_flight_are_bounded(alert_db):
    url, storage, conn = alert_db
    in_flight, most = 0, 0

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await reader.read(65536)
        await asyncio.sleep(0.3)
        in_flight -= 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(slow, "127.0.0.1", 0)
    try:
        await _due_alert(storage, conn, "busy", f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/h")
        await _more_due_alerts(conn, "busy", 5)
        settings = AlertSettings(webhook_http_hosts="127.0.0.1", max_concurrent_per_org=2)
        await AlertWorker(url, storage, settings).run_once()
    finally:
        server.close()
    assert await _errors(conn, "busy") == [""] * 6
    assert most == 2, f"{most} deliveries of one org in flight at once (at most 2)"
