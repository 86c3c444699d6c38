"""Delivery of low-balance alerts: a worker inside every authority process.

Crossings are detected in PostgreSQL by the transaction of the Commit that
crosses (migrations/0005_alerts.sql), which queues a pending alert and
pg_notify()s channel `credit_alerts`. This worker LISTENs on it (and looks
every few seconds anyway, in case a notification was missed), then:

* decides pool thresholds queued as checks (exactly once, on committed data);
* leases due alerts (replicas skip each other's with SKIP LOCKED and a lease),
  POSTs each to its org's webhook, signed with HMAC-SHA256 of the raw body:
  `X-Credit-Signature: sha256=<hex>`;
* records every attempt; a failed one is retried with exponential backoff
  (CREDIT_ALERT_RETRY_BASE_SECONDS doubling, capped by
  CREDIT_ALERT_RETRY_MAX_SECONDS) until CREDIT_ALERT_MAX_ATTEMPTS, then the
  alert is marked failed.

A receiver verifies with `verify_signature(secret, raw_body, header)` or the
equivalent in its language, and deduplicates on `X-Credit-Event-Id` (the body
is identical on every attempt). Its `forecast` is the burn rate over the 7 days
before the alert fired and the run-out date at that rate (credit_service/reports.py).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import logging
import random
import time
from dataclasses import replace
from datetime import timezone

import asyncpg

from ..model import AlertEvent, DueAlert
from ..money import format_credits
from ..reports import DEFAULT_WINDOW_DAYS as FORECAST_WINDOW_DAYS
from ..reports import Reports
from ..settings import AlertSettings
from ..storage import Storage
from ..webhook_policy import Resolver, parse_hosts, system_resolver
from .webhook_post import post

log = logging.getLogger("credit_service.alerts")

CHANNEL = "credit_alerts"
SIGNATURE_HEADER = "X-Credit-Signature"
EVENT_TYPE = "credit.low_balance"


def sign(secret: str, body: bytes) -> str:
    """The X-Credit-Signature value of a body: sha256=<hex HMAC-SHA256 under the org's secret>."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    return header is not None and hmac.compare_digest(sign(secret, body), header.strip())


def payload(event: AlertEvent) -> bytes:
    """The alert's JSON body; the same bytes on every attempt."""
    body = {
        "type": EVENT_TYPE,
        "id": f"{event.org_id}:{event.event_id}",
        "org_id": event.org_id,
        "scope": "pool" if event.user_id is None else "allocation",
        "user_id": event.user_id,
        "threshold": {"id": event.threshold_id, "kind": event.kind, "value": event.value,
                      "millicredits": event.threshold_mc, "credits": format_credits(event.threshold_mc)},
        "limit_millicredits": event.limit_mc,
        "remaining_millicredits": event.remaining_mc,
        "remaining_credits": format_credits(event.remaining_mc),
        "fired_at": event.created_at.isoformat(),
        "forecast": forecast_fields(event),
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def forecast_fields(event: AlertEvent) -> dict | None:
    """The burn rate over the FORECAST_WINDOW_DAYS before the alert fired and when, at that rate, the
    remaining credits run out (None when nothing was used in the window: no date to project)."""
    if event.burn_rate_mc_per_day is None:
        return None
    out = event.runs_out_at
    return {"window_days": FORECAST_WINDOW_DAYS,
            "burn_rate_millicredits_per_day": event.burn_rate_mc_per_day,
            "burn_rate_credits_per_day": format_credits(event.burn_rate_mc_per_day),
            "runs_out_at": out.isoformat() if out is not None else None,
            "summary": (f"at this rate, runs out on {out:%Y-%m-%d %H:%M} UTC" if out is not None
                        else f"nothing was used in the last {FORECAST_WINDOW_DAYS} days")}


def retry_delay(attempt: int, settings: AlertSettings) -> float | None:
    """Seconds before the next attempt after `attempt` failed, or None to give up."""
    if attempt >= settings.max_attempts:
        return None
    delay = min(settings.retry_base_seconds * 2 ** (attempt - 1), settings.retry_max_seconds)
    return delay * random.uniform(0.8, 1.2)


class AlertWorker:
    def __init__(self, database_url: str, storage: Storage, settings: AlertSettings,
                 resolver: Resolver = system_resolver):
        self._database_url = database_url
        self._storage = storage
        self._settings = settings
        self._http_hosts = parse_hosts(settings.webhook_http_hosts)
        self._resolver = resolver
        self._per_org: dict[str, asyncio.Semaphore] = {}  # at most max_concurrent_per_org deliveries an org
        self._reports = Reports(storage)
        self._wake = asyncio.Event()
        self._in_flight: set[asyncio.Task] = set()  # deliveries under way (each holds its alert's lease)
        self._org_in_flight: dict[str, int] = {}  # of them, each org's
        self.delivered = 0

    async def run(self) -> None:
        listener = asyncio.create_task(self._listen())
        try:
            while True:
                due = None
                try:
                    if await self.start_due():  # else waiting for room: the next delivery to end wakes the loop
                        due = await self._storage.next_alert_due_seconds()
                except asyncio.CancelledError:
                    raise
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                    log.warning("alert pass failed: %s", type(error).__name__)
                except Exception:
                    log.exception("alert pass failed")
                timeout = self._settings.poll_seconds if due is None else min(due, self._settings.poll_seconds)
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=max(timeout, 0.01))
                except TimeoutError:
                    pass
                self._wake.clear()
        finally:
            listener.cancel()
            for task in self._in_flight:
                task.cancel()  # their leases run out; another pass (or replica) sends them again

    async def run_once(self) -> None:
        """Sends everything due now, waiting for the deliveries (run() does not wait: a slow receiver never
        holds up the next alert that falls due)."""
        while True:
            await self.start_due()
            if not self._in_flight:
                return
            await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)

    async def start_due(self) -> bool:
        """Decides queued pool checks, then starts a delivery of every alert that is due, while fewer than
        CREDIT_ALERT_MAX_IN_FLIGHT are in flight and fewer than CREDIT_ALERT_MAX_CONCURRENT_PER_ORG of its org
        (each delivery that ends wakes the loop to claim more). Claimed alerts are sent at once, never queued
        behind their org's: a lease never runs out while an alert waits. False when what is due may be waiting
        for room (then a delivery that ends, not the due time, wakes the loop)."""
        while True:
            consumed, fired = await self._storage.process_alert_checks(100)
            if fired:
                log.info("%d pool alerts fired", fired)
            if consumed < 100:
                break
        per_org = max(self._settings.max_concurrent_per_org, 1)
        while (room := min(10, max(self._settings.max_in_flight, 1) - len(self._in_flight))) > 0:
            busy = tuple(org for org, n in self._org_in_flight.items() if n >= per_org)
            claimed = await self._storage.claim_alert_deliveries(room, self._settings.lease_seconds, per_org, busy)
            for due in claimed:
                org = due.event.org_id
                self._org_in_flight[org] = self._org_in_flight.get(org, 0) + 1
                task = asyncio.create_task(self._deliver_logged(due))
                self._in_flight.add(task)
                task.add_done_callback(functools.partial(self._finished, org))
            if len(claimed) < room:  # all that is due is sent, unless it is a busy org's
                return not any(n >= per_org for n in self._org_in_flight.values())
        return False

    def _finished(self, org_id: str, task: asyncio.Task) -> None:
        self._in_flight.discard(task)
        left = self._org_in_flight.pop(org_id, 1) - 1
        if left > 0:
            self._org_in_flight[org_id] = left
        self._wake.set()

    async def _deliver_logged(self, due: DueAlert) -> None:
        try:
            await self._deliver(due)
        except asyncio.CancelledError:
            raise
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            log.warning("alert %s:%s delivery not recorded: %s", due.event.org_id, due.event.event_id,
                        type(error).__name__)
        except Exception:
            log.exception("alert %s:%s delivery failed", due.event.org_id, due.event.event_id)

    async def _with_forecast(self, event: AlertEvent) -> AlertEvent:
        """The event with its forecast, computed at the first attempt and stored, so later attempts send
        the same bytes."""
        if event.burn_rate_mc_per_day is not None:
            return event
        line = await self._reports.at_alert(event.org_id, event.user_id, event.remaining_mc,
                                            event.created_at.astimezone(timezone.utc))
        rate, out = await self._storage.fix_alert_forecast(event.org_id, event.event_id, line.burn_rate_mc_per_day,
                                                           line.runs_out_at)
        return replace(event, burn_rate_mc_per_day=rate, runs_out_at=out)

    async def _deliver(self, due: DueAlert) -> None:
        event, attempt = await self._with_forecast(due.event), due.attempt
        body = payload(event)
        headers = {"Content-Type": "application/json", "User-Agent": "credit-authority-alerts/1",
                   SIGNATURE_HEADER: sign(due.webhook_secret, body), "X-Credit-Event": EVENT_TYPE,
                   "X-Credit-Event-Id": f"{event.org_id}:{event.event_id}",
                   "X-Credit-Delivery-Attempt": str(attempt)}
        slots = self._per_org.setdefault(event.org_id, asyncio.Semaphore(self._settings.max_concurrent_per_org))
        async with slots:
            started = time.monotonic()
            status, error = (None, "secret_unreadable") if not due.webhook_secret else await post(
                due.webhook_url, body, headers, deadline=self._settings.timeout_seconds,
                http_hosts=self._http_hosts, resolver=self._resolver)
            duration_ms = int((time.monotonic() - started) * 1000)
        delivered = status is not None and 200 <= status < 300
        retry_in = None if delivered else retry_delay(attempt, self._settings)
        await self._storage.record_alert_delivery(event.org_id, event.event_id, attempt, due.webhook_url,
                                                  status, "" if delivered else error, duration_ms, delivered,
                                                  retry_in)
        if delivered:
            self.delivered += 1
            log.info("alert %s:%s delivered (attempt %d)", event.org_id, event.event_id, attempt)
        else:
            log.warning("alert %s:%s attempt %d failed: %s%s", event.org_id, event.event_id, attempt, error,
                        f"; retry in {retry_in:.1f}s" if retry_in is not None else "; giving up")

    async def _listen(self) -> None:
        """LISTEN credit_alerts on a connection of its own; reconnects when it drops."""
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self._database_url)
                await conn.add_listener(CHANNEL, lambda *_: self._wake.set())
                self._wake.set()  # catch up on anything queued while not listening
                while not conn.is_closed():
                    await asyncio.sleep(self._settings.poll_seconds)
                    await conn.execute("SELECT 1")  # notices a dead connection
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("alert listener reconnecting: %s", type(error).__name__)
            finally:
                if conn is not None and not conn.is_closed():
                    try:
                        await asyncio.wait_for(conn.close(), timeout=2)
                    except Exception:
                        conn.terminate()
            await asyncio.sleep(1)


_running: set[asyncio.Task] = set()


def start_alert_worker(database_url: str, storage: Storage, settings: AlertSettings) -> asyncio.Task | None:
    """Starts the worker on the running loop (jobs.start_jobs() calls this); None when CREDIT_ALERTS_ENABLED=0."""
    if not settings.enabled:
        return None
    task = asyncio.get_running_loop().create_task(AlertWorker(database_url, storage, settings).run(),
                                                  name="alert-worker")
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task
