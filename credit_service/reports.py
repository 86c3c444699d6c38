"""Statements and forecasts (README, "Statements and forecasts"): the rules; storage/reports.py reads the ledger.

* A statement covers one account for [start, end): the pool of an org (org_id alone), a member's allocation
  (org_id and user_id) or an individual balance (user_id alone). Its balance is credits not yet used
  (pool: total − what all its allocations used; allocation, individual: limit − used);
  closing = opening + credits in + adjustments + allocation changes − usage, all from the ledger.
  Periods of at most MAX_PERIOD_DAYS; end unset means now.
* A forecast measures the burn rate over a trailing window: usage charged in the window ÷ its days, in
  millicredits per day rounded up, and the run-out time: now + remaining ÷ rate (none at rate 0; now when
  nothing remains). The low-balance alert carries the same figures for the alerted pool or allocation,
  measured over the window ending when the alert fired (jobs/alert_delivery.py).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from .errors import InvalidArgument
from .model import Account, Forecast, ForecastLine, Statement, WindowUsage
from .storage import Storage
from .validators import optional_id

MAX_PERIOD_DAYS = 366
DEFAULT_WINDOW_DAYS = 7
MAX_WINDOW_DAYS = 365
MAX_LINES = 5_000  # per list of a statement; the sums always cover everything
MICROSECONDS_PER_DAY = 86_400 * 10**6
LATEST = datetime.max.replace(tzinfo=timezone.utc)  # google.protobuf.Timestamp's range ends in 9999 too


def require_account(org_id: str, user_id: str) -> Account:
    """Exactly one kind of account: org alone (pool), org and user (allocation), user alone (individual)."""
    org, user = optional_id("account.org_id", org_id), optional_id("account.user_id", user_id)
    if not org and not user:
        raise InvalidArgument("account", "org_id (a pool), org_id and user_id (an allocation) or user_id "
                                         "(an individual balance) is required")
    return Account(org or None, user or None)


def require_period(start: datetime | None, end: datetime | None, now: datetime) -> tuple[datetime, datetime | None]:
    if start is None:
        raise InvalidArgument("start_time", "is required")
    if start >= (end or now):
        raise InvalidArgument("end_time" if end else "start_time",
                              "must be after start_time" if end else "must be before now (end_time unset)")
    if (end or now) - start > timedelta(days=MAX_PERIOD_DAYS):
        raise InvalidArgument("end_time", f"the period is at most {MAX_PERIOD_DAYS} days")
    return start, end


def require_window(window_days: int) -> int:
    if window_days == 0:
        return DEFAULT_WINDOW_DAYS
    if not 1 <= window_days <= MAX_WINDOW_DAYS:
        raise InvalidArgument("window_days", f"must be 1 … {MAX_WINDOW_DAYS} days (0 means {DEFAULT_WINDOW_DAYS})")
    return window_days


def burn_rate(used_mc: int, window_days: int) -> int:
    """Millicredits per day, rounded up: a rate that has been reached is never shown as lower."""
    return -(-used_mc // window_days)


def runs_out_at(at: datetime, remaining_mc: int, rate_mc_per_day: int) -> datetime | None:
    """at + remaining ÷ rate (to the microsecond, rounded down); None at rate 0, `at` when nothing remains,
    the end of Timestamp's range when that is later."""
    if rate_mc_per_day <= 0:
        return None
    if remaining_mc <= 0:
        return at
    microseconds = remaining_mc * MICROSECONDS_PER_DAY // rate_mc_per_day
    if microseconds >= (LATEST - at) // timedelta(microseconds=1):
        return LATEST
    return at + timedelta(microseconds=microseconds)


def forecast_line(usage: WindowUsage, window_days: int, at: datetime) -> ForecastLine:
    rate = burn_rate(usage.used_in_window_mc, window_days)
    return ForecastLine(usage.user_id, usage.remaining_mc, usage.used_in_window_mc, rate,
                        runs_out_at(at, usage.remaining_mc, rate))


class Reports:
    def __init__(self, storage: Storage):
        self._storage = storage

    async def statement(self, org_id: str, user_id: str, start: datetime | None,
                        end: datetime | None) -> Statement:
        account = require_account(org_id, user_id)
        start, end = require_period(start, end, datetime.now(timezone.utc))
        return await self._storage.statement(account, start, end, MAX_LINES)

    async def forecast(self, org_id: str, user_id: str, window_days: int) -> Forecast:
        account = require_account(org_id, user_id)
        if account.scope == "allocation":
            raise InvalidArgument("account.user_id", "a forecast is of an organization (its pool and every "
                                                     "member's allocation) or of an individual: not both")
        days = require_window(window_days)
        now, total, members = await self._storage.window_usage(account, days)
        return Forecast(account, days, now, forecast_line(total, days, now),
                        [forecast_line(m, days, now) for m in members])

    async def at_alert(self, org_id: str, user_id: str | None, remaining_mc: int,
                       fired_at: datetime) -> ForecastLine:
        """The forecast an alert carries: usage over the DEFAULT_WINDOW_DAYS before it fired, and when the
        remaining credits it reports run out at that rate, counted from when it fired."""
        start = fired_at - timedelta(days=DEFAULT_WINDOW_DAYS)
        used = await self._storage.usage_between(org_id, user_id, start, fired_at)
        return forecast_line(WindowUsage(user_id, remaining_mc, used), DEFAULT_WINDOW_DAYS, fired_at)
