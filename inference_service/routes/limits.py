"""Rate limits in the console (issue #14): the limits the authority enforces in every Reserve (README,
"Rate limits") and what is left of them now. The figures are the authority's (ListRateLimits); a change
is one SetRateLimit, checked by the authority too (bounds, credit ceilings only on members).

* GET /api/v1/console/limits — owners/admins: the organization's limits, every member's and the org's
  keys'; a member: the organization's and their own (and their keys'); an individual: their own.
* POST /api/v1/console/limits — owners/admins only: set limits of the organization (no user_id), of a
  member (user_id) or of one of the organization's API keys (key_id); limits left out stay as they are;
  `clear: true` removes every limit of that scope.

A bad value is 400 in OpenAI's error body with `param` naming the field; a member or an individual
trying to set is 403; either way nothing changes.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from credit.v1 import admin_pb2
from credit_service.ids import API_KEY_ID

from ..console import Viewer, invalid, millicredits, require_id
from ..service import credits_fields, iso_time
from .console import READS, WRITES, viewer

TAGS: list[str | Enum] = ["console"]
router = APIRouter()

COUNTS = ("requests_per_minute", "tokens_per_minute", "max_parallel")  # whole numbers
CEILINGS = ("credits_per_day", "credits_per_month")  # credits, members only
INT64 = 2**63
DIGITS = re.compile(r"-?\d{1,19}")


class LimitBody(BaseModel):
    """Values are checked in the route, after the role: a member's attempt is 403 whatever it sends."""

    model_config = ConfigDict(extra="forbid")
    user_id: str = Field("", description="a member whose limits to set; empty: the organization's")
    key_id: str = Field("", description="an API key of the organization whose limits to set (instead of user_id)")
    requests_per_minute: Any = Field(None, description="requests per minute, 1-1,000,000 (unset: unchanged)")
    tokens_per_minute: Any = Field(None, description="tokens per minute, 1-1,000,000,000 (unset: unchanged)")
    max_parallel: Any = Field(None, description="requests in flight (open holds) at once, 1-100,000")
    credits_per_day: Any = Field(None, description="credits per UTC day, e.g. \"25\" (members only)")
    credits_per_month: Any = Field(None, description="credits per UTC month, e.g. \"500\" (members only)")
    clear: Any = Field(False, description="true: remove every limit of the scope (set no limit with it)")


def count(field: str, value: Any) -> int | None:
    """A whole number (JSON number or digits) for the authority to bound; None: leave it as it is."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and DIGITS.fullmatch(value.strip()):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not -INT64 < value < INT64:
        raise invalid(field, f"{field} must be a whole number (leave it out to keep the current limit)")
    return value


def ceiling(field: str, value: Any) -> int | None:
    return None if value is None or value == "" else millicredits(field, value, allow_zero=False)


def limit_request(who: Viewer, body: LimitBody) -> admin_pb2.SetRateLimitRequest:
    """The SetRateLimit an admin's body asks for, its scope inside the viewer's organization."""
    if not isinstance(body.clear, bool):
        raise invalid("clear", "clear must be true or false")
    if body.user_id:
        require_id("user_id", body.user_id)
        if body.user_id not in who.member_ids():
            raise invalid("user_id", f"user_id: '{body.user_id}' is not a member of '{who.org_id}'.")
    if body.key_id and (body.user_id or not API_KEY_ID.fullmatch(body.key_id)):
        raise invalid("key_id", "key_id must be an API key id (ck_ and 16 hex digits), without user_id")
    request = admin_pb2.SetRateLimitRequest(org_id=who.org_id, user_id=body.user_id, key_id=body.key_id,
                                            clear=body.clear)
    for field in COUNTS:
        value = count(field, getattr(body, field))
        if value is not None:
            setattr(request, field, value)
    for field in CEILINGS:
        value = ceiling(field, getattr(body, field))
        if value is not None:
            setattr(request, field + "_millicredits", value)
    return request


def is_set(message: Any, name: str) -> bool:
    """Whether an optional field of a message is set (named by a variable, which the stubs' types refuse)."""
    return bool(message.HasField(name))


def credit_limit(prefix: str, mc: int | None) -> dict[str, Any]:
    return {prefix: None, f"{prefix}_millicredits": None} if mc is None else credits_fields(prefix, mc)


def limit_dict(r: admin_pb2.RateLimit) -> dict[str, Any]:
    """One scope's limits (null: none) and what is left of them now (null where there is no limit)."""
    def limit(name: str) -> int | None:
        return getattr(r, name) if is_set(r, name) else None

    rpm, tpm = limit("requests_per_minute"), limit("tokens_per_minute")
    return {"scope": r.scope, "org_id": r.org_id or None, "user_id": r.user_id or None, "key_id": r.key_id or None,
            "requests_per_minute": rpm, "requests_remaining": None if rpm is None else r.requests_remaining,
            "tokens_per_minute": tpm, "tokens_remaining": None if tpm is None else r.tokens_remaining,
            "max_parallel": limit("max_parallel"), "open_holds": r.open_holds,
            **credit_limit("credits_per_day", limit("credits_per_day_millicredits")),
            **credits_fields("credits_today", r.credits_today_millicredits),
            **credit_limit("credits_per_month", limit("credits_per_month_millicredits")),
            **credits_fields("credits_this_month", r.credits_this_month_millicredits),
            "updated_at": iso_time(r.updated_at), "updated_by": r.updated_by}


def has_limits(r: admin_pb2.RateLimit) -> bool:
    """A cleared scope keeps its row (and state) in the authority; the console shows only set limits."""
    return any(is_set(r, name) for name in (*COUNTS, "credits_per_day_millicredits",
                                             "credits_per_month_millicredits"))


@router.get("/api/v1/console/limits", tags=TAGS, responses=READS)
async def limits(who: Viewer = Depends(viewer)):
    """The rate limits this viewer may see, with what is left now: requests and tokens that may still start
    at once, open holds, credits reserved or charged today and this month (UTC)."""
    if not who.org_id:
        scope, request = "individual", admin_pb2.ListRateLimitsRequest(user_id=who.user_id)
    elif who.is_admin:
        scope, request = "org", admin_pb2.ListRateLimitsRequest(org_id=who.org_id)
    else:
        scope, request = "member", admin_pb2.ListRateLimitsRequest(org_id=who.org_id, user_id=who.user_id)
    answer = await who.admin.list_rate_limits(request)
    return {"scope": scope, "org_id": who.org_id or None, "user_id": who.user_id,
            "data": [limit_dict(r) for r in answer.limits if has_limits(r)]}


@router.post("/api/v1/console/limits", tags=TAGS, responses=WRITES)
async def set_limits(body: LimitBody, who: Viewer = Depends(viewer)):
    """Sets limits of the organization, a member or an org API key (owners and admins); the answer is the
    scope's limits after the change."""
    who.require_admin()
    return limit_dict(await who.admin.set_rate_limit(limit_request(who, body)))
