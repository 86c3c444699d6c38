"""Statements and forecasts in the console (issue #13): what came in, what went out, and where a
balance is heading. The figures are the authority's (GetStatement, GetForecast); the views are in
inference_service/reports.py.

* GET /api/v1/console/statement[.csv]?start=&end=&user_id= — owners/admins: the org's pool, or a
  member's allocation with user_id; a member: their own allocation; an individual: their balance.
* GET /api/v1/console/forecast?window_days= — owners/admins: the pool and every member's allocation;
  a member: their own allocation; an individual: their balance.
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from credit.v1 import admin_pb2
from credit_service.statement_csv import statement_csv as statement_table

from ..console import Viewer
from ..reports import Period, forecast_dict, statement_dict, statement_period
from .console import READS, viewer

TAGS: list[str | Enum] = ["console"]
router = APIRouter()


def statement_account(who: Viewer, user_id: str | None) -> admin_pb2.AccountRef:
    """Whose statement this viewer may read: admins the pool or any member's allocation, others their own."""
    org_id, user = who.account_scope(user_id, "statement")
    return admin_pb2.AccountRef(org_id=org_id, user_id=user)


async def fetch_statement(who: Viewer, start: str | None, end: str | None,
                          user_id: str | None) -> tuple[admin_pb2.Statement, Period]:
    account = statement_account(who, user_id)
    period = statement_period(start, end, datetime.now(timezone.utc))
    request = admin_pb2.GetStatementRequest(account=account)
    request.start_time.FromDatetime(period.start)
    if period.end is not None:
        request.end_time.FromDatetime(period.end)
    return await who.admin.get_statement(request), period


def start_param():
    return Query(None, description="first day (YYYY-MM-DD, UTC); default: the first of this month")


def end_param():
    return Query(None, description="last day, included (YYYY-MM-DD, UTC); default: today (the period ends now)")


def user_param():
    return Query(None, description="a member's allocation (admins); others may only name themselves")


@router.get("/api/v1/console/statement", tags=TAGS, responses=READS)
async def statement(who: Viewer = Depends(viewer), start: str | None = start_param(),
                    end: str | None = end_param(), user_id: str | None = user_param()):
    """Opening balance, credits in (with their source), refunds and adjustments, allocation changes, usage
    by model and by member, closing balance: closing = opening + credits in + adjustments + allocation
    changes − usage."""
    return statement_dict(*await fetch_statement(who, start, end, user_id))


@router.get("/api/v1/console/statement.csv", tags=TAGS, responses=READS, response_class=Response)
async def statement_csv(who: Viewer = Depends(viewer), start: str | None = start_param(),
                        end: str | None = end_param(), user_id: str | None = user_param()):
    """The same statement as CSV: one table, a row per line, credits signed (+ in, − out)."""
    s, period = await fetch_statement(who, start, end, user_id)
    whose = "-".join(x for x in (s.account.org_id, s.account.user_id) if x)
    first, last = period.first_day.isoformat(), period.last_day.isoformat()
    name = f"statement-{whose}-{first}-{last}.csv"
    return Response(statement_table(s, note=f"{first} to {last} (UTC)"), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/api/v1/console/forecast", tags=TAGS, responses=READS)
async def forecast(who: Viewer = Depends(viewer),
                   window_days: int = Query(7, ge=1, le=365, description="days the burn rate is measured over")):
    """Burn rate per day over the window, remaining credits and when they run out at that rate
    (runs_out_at null when nothing was used in the window)."""
    if not who.org_id:
        answer = await who.admin.get_forecast(admin_pb2.GetForecastRequest(
            account=admin_pb2.AccountRef(user_id=who.user_id), window_days=window_days))
        return forecast_dict(answer, scope="individual")
    answer = await who.admin.get_forecast(admin_pb2.GetForecastRequest(
        account=admin_pb2.AccountRef(org_id=who.org_id), window_days=window_days))
    if who.is_admin:
        return forecast_dict(answer, scope="org")
    return forecast_dict(answer, scope="member", only_user=who.user_id)
