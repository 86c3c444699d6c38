"""Statements and forecasts as the console shows them: the period a statement asks for (dates, UTC),
the views of the authority's Statement and Forecast (credits as decimal strings with three places,
millicredits beside them) and the statement as CSV. Its routes are in routes/reports.py; the figures
are the authority's (GetStatement, GetForecast), never recomputed here.

A statement covers whole UTC days: from the start date's midnight to the end of the end date, or to
now when that is later than now (a period that has not ended closes at the balance now).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from credit.v1 import admin_pb2
from credit_service.statement_csv import scope_of

from . import errors
from .service import credits_fields, iso_time

MAX_PERIOD_DAYS = 366  # the authority's bound on a statement's period
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
SCOPES = {"pool": "the organization's pool", "allocation": "a member's allocation",
          "individual": "an individual balance"}


@dataclass(frozen=True)
class Period:
    """[start, end) in UTC; end None means now."""

    start: datetime
    end: datetime | None
    first_day: date
    last_day: date


def parse_day(field: str, text: str) -> date:
    if not DATE.fullmatch(text):
        raise errors.bad_request(f"{field} must be a date written YYYY-MM-DD, e.g. 2025-01-31", "invalid_date")
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise errors.bad_request(f"{field} is not a calendar date: {text}", "invalid_date") from None
    if day.year < 1971:
        raise errors.bad_request(f"{field} must be from 1971 on", "invalid_date")
    return day


def statement_period(start: str | None, end: str | None, now: datetime) -> Period:
    """The days asked for (end inclusive); by default the current calendar month so far."""
    today = now.date()
    first = parse_day("start", start) if start else (parse_day("end", end).replace(day=1) if end
                                                     else today.replace(day=1))
    last = parse_day("end", end) if end else max(today, first)
    if last < first:
        raise errors.bad_request("end must be on or after start", "invalid_range")
    if first > today:
        raise errors.bad_request(f"start must not be after today ({today.isoformat()}, UTC)", "invalid_range")
    if (last - first).days + 1 > MAX_PERIOD_DAYS:
        raise errors.bad_request(f"a statement covers at most {MAX_PERIOD_DAYS} days", "invalid_range")
    begin = datetime.combine(first, time(), timezone.utc)
    stop = datetime.combine(last + timedelta(days=1), time(), timezone.utc)
    return Period(begin, None if stop > now else stop, first, last)


def line_dict(line: admin_pb2.StatementLine) -> dict[str, Any]:
    return {"at": iso_time(line.at), "kind": line.kind, **credits_fields("amount", line.amount_millicredits),
            "source": line.source, "reference": line.reference, "note": line.note}


def usage_dict(usage: admin_pb2.StatementUsage) -> dict[str, Any]:
    return {"key": usage.key, "requests": usage.requests, **credits_fields("credits", usage.credits_used_millicredits)}


def statement_dict(s: admin_pb2.Statement, period: Period) -> dict[str, Any]:
    scope = scope_of(s.account)
    return {"account": {"scope": scope, "org_id": s.account.org_id, "user_id": s.account.user_id,
                        "description": SCOPES[scope]},
            "start_date": period.first_day.isoformat(), "end_date": period.last_day.isoformat(),
            "start": iso_time(s.start_time), "end": iso_time(s.end_time), "up_to_now": period.end is None,
            **credits_fields("opening_balance", s.opening_balance_millicredits),
            "credits_in": [line_dict(x) for x in s.credits_in],
            **credits_fields("credits_in_total", s.credits_in_millicredits),
            "adjustments": [line_dict(x) for x in s.adjustments],
            **credits_fields("adjustments_total", s.adjustments_millicredits),
            "allocation_changes": [line_dict(x) for x in s.allocation_changes],
            **credits_fields("allocation_changes_total", s.allocation_changes_millicredits),
            **credits_fields("usage", s.usage_millicredits),
            "usage_by_model": [usage_dict(u) for u in s.usage_by_model],
            "usage_by_member": [usage_dict(u) for u in s.usage_by_member],
            **credits_fields("closing_balance", s.closing_balance_millicredits)}


def forecast_line_dict(line: admin_pb2.ForecastLine) -> dict[str, Any]:
    return {"user_id": line.user_id, **credits_fields("remaining", line.remaining_millicredits),
            **credits_fields("used_in_window", line.used_in_window_millicredits),
            **credits_fields("burn_rate_per_day", line.burn_rate_millicredits_per_day),
            "runs_out_at": iso_time(line.runs_out_at) if line.HasField("runs_out_at") else None}


def forecast_dict(f: admin_pb2.Forecast, *, scope: str, only_user: str = "") -> dict[str, Any]:
    """scope "org" (pool and every member), "member" (only only_user's allocation) or "individual"."""
    members = [forecast_line_dict(m) for m in f.members if not only_user or m.user_id == only_user]
    return {"scope": scope, "window_days": f.window_days, "computed_at": iso_time(f.computed_at),
            "total": None if scope == "member" else forecast_line_dict(f.total), "members": members}
