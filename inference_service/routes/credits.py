"""The caller's own credits: balance and usage."""

from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter, Depends, Query, Request
from google.protobuf.json_format import MessageToDict

from credit.v1 import admin_pb2

from .. import errors
from ..authority_client import funding_label
from ..service import Caller, client_request_id, credits_fields, iso_time
from .common import READS, caller, service_of

router = APIRouter(tags=["credits"])


@router.get("/api/v1/credits/balance", responses=READS)
async def credits_balance(request: Request, who: Caller = Depends(caller)):
    """The caller's own balance (org allocation or individual), in credits and millicredits."""
    service = service_of(request)
    billing = service.billing(who, request, None)
    balance = await service.client.balance(billing.user_id, billing.org_id)
    return {"user_id": billing.user_id, "funding_source": funding_label(balance.funding),
            **credits_fields("limit", balance.limit_millicredits),
            **credits_fields("used", balance.used_millicredits),
            **credits_fields("held", balance.held_millicredits),
            **credits_fields("available", balance.available_millicredits)}

@router.get("/api/v1/usage", responses=READS)
async def usage(http: Request, who: Caller = Depends(caller),
                start: datetime | None = Query(None, description="ISO time, inclusive"),
                end: datetime | None = Query(None, description="ISO time, exclusive"),
                group_by: str | None = Query(None, pattern="^(model|service_type|day)$"),
                limit: int = Query(100, ge=1, le=1000)):
    """The caller's own usage rows (or groups), newest first."""
    service = service_of(http)
    key = who.key
    if who.org_header and who.org_header != key.org_id:
        if key.org_id:
            raise errors.forbidden(f"This API key belongs to organization '{key.org_id}'.")
        await service.client.balance(key.user_id, who.org_header)  # 403 unless a member
    request = admin_pb2.QueryUsageRequest(
        user_id=key.user_id, org_id=who.org_header or key.org_id, limit=limit,
        group_by=admin_pb2.UsageGroupBy.Value(f"USAGE_GROUP_BY_{group_by.upper()}") if group_by
        else admin_pb2.USAGE_GROUP_BY_UNSPECIFIED)
    for field, name, value in (("start_time", "start", start), ("end_time", "end", end)):
        if value is not None:
            try:
                getattr(request, field).FromDatetime(
                    value if value.tzinfo else value.replace(tzinfo=timezone.utc))
            except (OverflowError, ValueError):  # outside 0001-01-01 … 9999-12-31 once in UTC
                raise errors.bad_request(f"'{name}' is out of range (0001-01-01 to 9999-12-31 UTC)",
                                         "invalid_time") from None
    result = await service.client.usage(request)
    return {
        "object": "list",
        "data": [{"request_id": client_request_id(r.request_id), "reservation_id": r.reservation_id,
                  "model": r.service_name,
                  "service_type": r.service_type, "funding_source": f"org:{r.org_id}" if r.org_id else "individual",
                  **credits_fields("credits", r.credits_used_millicredits),
                  "created_at": iso_time(r.created_at),
                  "overrun": r.overrun, "late": r.late, "metadata": MessageToDict(r.request_metadata)}
                 for r in result.records],
        "groups": [{"key": g.key, "requests": g.requests, **credits_fields("credits",
                                                                             g.credits_used_millicredits)}
                   for g in result.groups],
        "total_requests": result.total_requests,
        **credits_fields("total_credits", result.total_millicredits),
    }
