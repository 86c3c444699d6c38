"""The org console's routes: its REST API under /api/v1/console/ and its static pages under /console/.

Module-level routes; the service comes from app state, and the `viewer` dependency carries the
signed-in key's user, their role and the authority client. What the console shows and who may
do what: inference_service/console.py.
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, RedirectResponse, Response

from credit.v1 import admin_pb2, types_pb2
from credit_service.ids import API_KEY_ID
from credit_service.statement_csv import audit_csv

from .. import acting, errors
from ..authority_client import funding_label
from ..console import (
    AUDIT_PAGE,
    KIND_ENUMS,
    ROLE_NAMES,
    STATIC_DIR,
    STATIC_HEADERS,
    AllocationBody,
    KeyBody,
    ThresholdBody,
    Viewer,
    WebhookBody,
    audit_dict,
    audit_filters,
    audit_request,
    console_admin,
    csv_of_records,
    event_dict,
    key_dict,
    key_request,
    member_dict,
    millicredits,
    org_dict,
    record_dict,
    require_id,
    threshold_dict,
    time_range,
    webhook_dict,
)
from ..service import credits_fields


async def viewer(request: Request) -> Viewer:
    """The signed-in user (API key, provider's access token, or SSO session) and their role in the org shown
    (a dependency of every console route). The authority is told who acts, from where (acting.py)."""
    service = request.app.state.service
    acting.begin(request)
    caller = await service.authenticate(request, session=True)
    key = caller.key
    acting.act_for(key.user_id, caller.signed_in_with, key.key_id, key.is_service)
    if key.is_service:
        raise errors.forbidden("Sign in to the console with a user API key, not an org service key.")
    org_id = key.org_id
    if caller.org_header:
        if key.org_id and caller.org_header != key.org_id:
            raise errors.forbidden(f"This API key belongs to organization '{key.org_id}'.")
        org_id = caller.org_header
    if not org_id:
        balance = await service.client.balance(key.user_id, "")
        if balance.funding.kind == types_pb2.Funding.ORG:
            org_id = balance.funding.org_id
    operator = key.user_id in service.settings.operators
    if not org_id:
        return Viewer(key.user_id, key.key_id, "", "individual", client=service.client,
                      signed_in_with=caller.signed_in_with, operator=operator)
    members = (await console_admin(service.client).list_members(admin_pb2.ListMembersRequest(org_id=org_id))).members
    me = next((m for m in members if m.user_id == key.user_id), None)
    if me is None:
        raise errors.forbidden(f"You are not a member of organization '{org_id}'.")
    return Viewer(key.user_id, key.key_id, org_id, ROLE_NAMES.get(me.role, "member"), tuple(members),
                  client=service.client, signed_in_with=caller.signed_in_with, operator=operator)

DOCUMENTED: dict[int | str, dict[str, Any]] = {code: {"description": text} for code, text in (
    (400, "bad request"), (401, "missing or invalid API key"), (402, "not enough credits (pool or allocation)"),
    (403, "not allowed for this role / organization"), (404, "not found"), (409, "conflict"),
    (413, "body too large"), (415, "not JSON"), (429, "too many failed authentication attempts"),
    (503, "credit authority unavailable"))}
READS: dict[int | str, dict[str, Any]] = {code: DOCUMENTED[code] for code in (400, 401, 403, 404, 429, 503)}
WRITES = DOCUMENTED
TAGS: list[str | Enum] = ["console"]
router = APIRouter()

# ---- who am I ----

@router.get("/api/v1/console/me", tags=TAGS, responses=READS)
async def me(who: Viewer = Depends(viewer)):
    """The signed-in user, their role and view, how they signed in (api_key, access_token or session; key_id
    is empty for the last two), and their own balance."""
    balance = await who.authority.balance(who.user_id, who.org_id)
    org_name = ""
    if who.org_id:
        org_name = (await who.admin.get_organization(admin_pb2.GetOrganizationRequest(org_id=who.org_id))).name
    return {"user_id": who.user_id, "key_id": who.key_id, "org_id": who.org_id, "org_name": org_name,
            "role": who.role, "view": who.view, "signed_in_with": who.signed_in_with, "operator": who.operator,
            "balance": {"funding_source": funding_label(balance.funding),
                        **credits_fields("limit", balance.limit_millicredits),
                        **credits_fields("used", balance.used_millicredits),
                        **credits_fields("held", balance.held_millicredits),
                        **credits_fields("available", balance.available_millicredits)}}

# ---- the org (owner/admin) ----

@router.get("/api/v1/console/org", tags=TAGS, responses=READS)
async def organization(who: Viewer = Depends(viewer)):
    """Pool total, allocated, unallocated, used and held; members with allocation, used and remaining."""
    who.require_admin()
    org = await who.admin.get_organization(admin_pb2.GetOrganizationRequest(org_id=who.org_id))
    return {"org": org_dict(org), "members": [member_dict(m) for m in who.members]}

@router.post("/api/v1/console/org/allocations", tags=TAGS, responses=WRITES)
async def set_allocation(body: AllocationBody, who: Viewer = Depends(viewer)):
    """Sets a member's allocation (their cap inside the pool)."""
    who.require_admin()
    require_id("user_id", body.user_id)
    if body.user_id not in who.member_ids():
        raise errors.not_found(f"'{body.user_id}' is not a member of '{who.org_id}'.")
    amount = millicredits("allocation", body.allocation, allow_zero=True)
    member = await who.admin.set_allocation(admin_pb2.SetAllocationRequest(
        org_id=who.org_id, user_id=body.user_id, allocation_millicredits=amount,
        allocated_by=f"console:{who.user_id}"))
    return member_dict(member)

TOP_UP_REFUSED = ("Credits cannot be added to the pool here: they are bought through checkout, or granted by an "
                  "operator (creditctl top-up, with a reference). The console's authority token cannot create "
                  "credits.")


@router.post("/api/v1/console/org/top-ups", tags=TAGS, responses=WRITES)
async def top_up(who: Viewer = Depends(viewer)):
    """Refused (403): credits enter only through a verified payment or an operator's top-up (role mint),
    which the REST service's token does not hold (issue #13)."""
    who.require_admin()
    raise errors.ApiError(403, TOP_UP_REFUSED, "permission_error", "credits_not_created_here")

# ---- API keys ----

async def visible_keys(who: Viewer) -> list[admin_pb2.ApiKey]:
    own = (await who.admin.list_api_keys(admin_pb2.ListApiKeysRequest(user_id=who.user_id))).keys
    if not who.is_admin:
        return list(own)
    org_keys = (await who.admin.list_api_keys(admin_pb2.ListApiKeysRequest(org_id=who.org_id))).keys
    seen = {k.key_id: k for k in (*org_keys, *own)}
    return sorted(seen.values(), key=lambda k: (-k.created_at.seconds, k.key_id))

@router.get("/api/v1/console/keys", tags=TAGS, responses=READS)
async def list_keys(who: Viewer = Depends(viewer)):
    """API keys: admins see the org's keys and their own; everyone else their own."""
    return {"data": [key_dict(k) for k in await visible_keys(who)]}

@router.post("/api/v1/console/keys", tags=TAGS, responses=WRITES)
async def create_key(body: KeyBody, who: Viewer = Depends(viewer)):
    """Creates a user key (bound to the org for members); the secret is shown once."""
    user_id = body.user_id or who.user_id
    require_id("user_id", user_id)
    if user_id != who.user_id:
        who.require_admin()
        if user_id not in who.member_ids():
            raise errors.not_found(f"'{user_id}' is not a member of '{who.org_id}'.")
    name = body.name.strip()
    if len(name) > 256 or not name.isprintable():
        raise errors.bad_request("name must be at most 256 printable characters", "invalid_name")
    created = await who.admin.create_api_key(key_request(body, user_id, who.org_id, name or "console key"))
    return {**key_dict(created.key), "secret": created.secret}

@router.delete("/api/v1/console/keys/{key_id}", tags=TAGS, responses=WRITES)
async def revoke_key(key_id: str = PathParam(description="key to revoke, e.g. ck_0123456789abcdef"),
                     who: Viewer = Depends(viewer)):
    """Revokes a key: admins any key of the org (or their own), others their own."""
    if not API_KEY_ID.fullmatch(key_id):
        raise errors.bad_request("key_id must look like ck_0123456789abcdef", "invalid_key_id")
    if key_id not in {k.key_id for k in await visible_keys(who)}:
        raise errors.not_found(f"No key '{key_id}' that you may revoke.")
    return key_dict(await who.admin.revoke_api_key(admin_pb2.RevokeApiKeyRequest(key_id=key_id)))

# ---- usage ----

async def query(who: Viewer, user_id: str | None, start, end, group_by: admin_pb2.UsageGroupBy.ValueType,
                limit: int):
    org_id, user = who.account_scope(user_id)
    request = admin_pb2.QueryUsageRequest(org_id=org_id, user_id=user, group_by=group_by, limit=limit)
    start, end = time_range(start, end)
    if start is not None:
        request.start_time.FromDatetime(start)
    if end is not None:
        request.end_time.FromDatetime(end)
    return await who.admin.query_usage(request)

def start_param():
    return Query(None, description="from this time (ISO date or date-time, UTC), inclusive")

def end_param():
    return Query(None, description="until this time, exclusive")

def user_param():
    return Query(None, description="only this member (admins; others may only name themselves)")

@router.get("/api/v1/console/usage/summary", tags=TAGS, responses=READS)
async def usage_summary(who: Viewer = Depends(viewer), start: datetime | None = start_param(),
                        end: datetime | None = end_param(),
                        user_id: str | None = user_param()):
    """Credits by day, model, member and service type over a time range."""
    groups = {"by_day": admin_pb2.USAGE_GROUP_BY_DAY, "by_model": admin_pb2.USAGE_GROUP_BY_MODEL,
              "by_user": admin_pb2.USAGE_GROUP_BY_USER, "by_service_type": admin_pb2.USAGE_GROUP_BY_SERVICE_TYPE}
    results = await asyncio.gather(*(query(who, user_id, start, end, g, 10_000) for g in groups.values()))
    summary: dict[str, Any] = {}
    for name, result in zip(groups, results, strict=True):
        rows = [{"key": g.key, "requests": g.requests, **credits_fields("credits", g.credits_used_millicredits)}
                for g in result.groups]
        summary[name] = sorted(rows, key=lambda g: g["key"]) if name == "by_day" else rows
    return {"total_requests": results[0].total_requests, **credits_fields("total", results[0].total_millicredits),
            **summary}

@router.get("/api/v1/console/usage/records", tags=TAGS, responses=READS)
async def usage_records(who: Viewer = Depends(viewer), start: datetime | None = start_param(),
                        end: datetime | None = end_param(),
                        user_id: str | None = user_param(),
                        limit: int = Query(100, ge=1, le=1000)):
    """Recent usage rows, newest first, with request ids and metadata."""
    result = await query(who, user_id, start, end, admin_pb2.USAGE_GROUP_BY_UNSPECIFIED, limit)
    return {"data": [record_dict(r) for r in result.records], "total_requests": result.total_requests,
            **credits_fields("total", result.total_millicredits)}

@router.get("/api/v1/console/usage/export.csv", tags=TAGS, responses=READS,
            response_class=Response)
async def usage_csv(who: Viewer = Depends(viewer), start: datetime | None = start_param(),
                    end: datetime | None = end_param(), user_id: str | None = user_param(),
                    limit: int = Query(10_000, ge=1, le=10_000)):
    """The same rows as /usage/records as CSV (newest first)."""
    result = await query(who, user_id, start, end, admin_pb2.USAGE_GROUP_BY_UNSPECIFIED, limit)
    name = f"usage-{who.org_id or who.user_id}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.csv"
    return Response(csv_of_records([record_dict(r) for r in result.records]), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})

# ---- alerts ----

@router.get("/api/v1/console/alerts", tags=TAGS, responses=READS)
async def alerts(who: Viewer = Depends(viewer), limit: int = Query(50, ge=1, le=1000)):
    """Thresholds with their state and the alerts sent: admins the org's, members their allocation's."""
    if not who.org_id:
        return {"webhook": None, "thresholds": [], "events": []}
    user = "" if who.is_admin else who.user_id
    thresholds, events = await asyncio.gather(
        who.admin.list_alert_thresholds(admin_pb2.ListAlertThresholdsRequest(org_id=who.org_id, user_id=user)),
        who.admin.list_alert_events(admin_pb2.ListAlertEventsRequest(org_id=who.org_id, user_id=user,
                                                                      limit=limit)))
    webhook = None
    if who.is_admin:
        webhook = webhook_dict((await who.admin.get_alert_webhook(admin_pb2.GetAlertWebhookRequest(
            org_id=who.org_id))).webhook)
    return {"webhook": webhook, "thresholds": [threshold_dict(t) for t in thresholds.thresholds],
            "events": [event_dict(e) for e in events.events]}

@router.post("/api/v1/console/alerts/webhook", tags=TAGS, responses=WRITES)
async def set_webhook(body: WebhookBody, who: Viewer = Depends(viewer)):
    """Sets where the org's alerts are POSTed and the secret that signs them (empty url removes it)."""
    who.require_admin()
    result = await who.admin.set_alert_webhook(admin_pb2.SetAlertWebhookRequest(
        org_id=who.org_id, url=body.url.strip(), secret=body.secret))
    return webhook_dict(result.webhook)

@router.post("/api/v1/console/alerts/thresholds", tags=TAGS, responses=WRITES)
async def create_threshold(body: ThresholdBody, who: Viewer = Depends(viewer)):
    """Adds a low-balance threshold on the pool or on a member's allocation."""
    who.require_admin()
    if body.user_id:
        require_id("user_id", body.user_id)
        if body.user_id not in who.member_ids():
            raise errors.not_found(f"'{body.user_id}' is not a member of '{who.org_id}'.")
    if body.kind == "absolute":
        value = millicredits("value", body.value, allow_zero=True)
    elif body.kind == "percent":
        text = str(body.value).strip()
        if isinstance(body.value, bool) or not re.fullmatch(r"\d{1,3}(\.0+)?", text) or float(text) > 100:
            raise errors.bad_request("a percent threshold is a whole number from 0 to 100", "invalid_percent")
        value = int(float(text))
    else:
        raise errors.bad_request("kind must be 'absolute' (credits) or 'percent'", "invalid_kind")
    result = await who.admin.create_alert_threshold(admin_pb2.CreateAlertThresholdRequest(
        org_id=who.org_id, user_id=body.user_id, kind=KIND_ENUMS[body.kind], value=value))
    return threshold_dict(result.threshold)

@router.delete("/api/v1/console/alerts/thresholds/{threshold_id}", tags=TAGS, responses=WRITES)
async def delete_threshold(threshold_id: int = PathParam(ge=1, le=2**63 - 1), who: Viewer = Depends(viewer)):
    """Removes a threshold."""
    who.require_admin()
    await who.admin.delete_alert_threshold(admin_pb2.DeleteAlertThresholdRequest(
        org_id=who.org_id, threshold_id=threshold_id))
    return {"deleted": True, "threshold_id": threshold_id}

# ---- the audit log (owners and admins) ----

def actor_param():
    return Query(None, description="records whose actor (the authority token's name) or on_behalf_of (e.g. "
                                   "'user:alice (session)') is exactly this")

def action_param():
    return Query(None, description="records of this change, e.g. SetAllocation, CreateApiKey")

def before_id_param():
    return Query(0, ge=0, le=2**63 - 1, description="records older than this audit_id (the previous page's "
                                                    "next_before_id); 0: from the newest")

def all_orgs_param():
    return Query(False, description="every organization's records, and those no organization owns (platform "
                                    "credentials, grants, users): operators only (CONSOLE_OPERATORS)")

async def audit_page(who: Viewer, actor: str | None, action: str | None, start: datetime | None,
                     end: datetime | None, before_id: int, limit: int, all_orgs: bool) -> list[admin_pb2.AuditRecord]:
    """The records, newest first: the viewer's org's (owners and admins), or with all_orgs every record
    (operators)."""
    if all_orgs:
        who.require_operator()
    else:
        who.require_admin()
    actor_, action_ = audit_filters(actor, action)
    start, end = time_range(start, end)
    records = await who.admin.list_audit_records(audit_request("" if all_orgs else who.org_id, actor_, action_,
                                                               start, end, before_id, limit))
    return list(records.records)

@router.get("/api/v1/console/audit", tags=TAGS, responses=READS)
async def audit(who: Viewer = Depends(viewer), actor: str | None = actor_param(), action: str | None = action_param(),
                start: datetime | None = start_param(), end: datetime | None = end_param(),
                before_id: int = before_id_param(), limit: int = Query(50, ge=1, le=AUDIT_PAGE),
                all_orgs: bool = all_orgs_param()):
    """The organization's audit log, newest first: each change made to it (allocations, keys, limits, alerts,
    purchases…) with when, who (the authority token and the person it acted for, from which address), what,
    and its fields before → after. next_before_id pages back (null: no older records). With all_orgs (operators):
    every record."""
    records = await audit_page(who, actor, action, start, end, before_id, min(limit + 1, AUDIT_PAGE), all_orgs)
    more = len(records) > limit or len(records) == AUDIT_PAGE
    page = records[:limit]
    return {"data": [audit_dict(r) for r in page], "next_before_id": page[-1].audit_id if more and page else None}

@router.get("/api/v1/console/audit/export.csv", tags=TAGS, responses=READS, response_class=Response)
async def audit_export(who: Viewer = Depends(viewer), actor: str | None = actor_param(),
                       action: str | None = action_param(), start: datetime | None = start_param(),
                       end: datetime | None = end_param(), before_id: int = before_id_param(),
                       limit: int = Query(1000, ge=1, le=10_000), all_orgs: bool = all_orgs_param()):
    """The same records as CSV (newest first, one row per record; the format of `creditctl audit --csv`)."""
    records: list[admin_pb2.AuditRecord] = []
    while len(records) < limit:  # in pages the authority allows, each older than the last
        want = min(limit - len(records), AUDIT_PAGE)
        page = await audit_page(who, actor, action, start, end, before_id, want, all_orgs)
        records += page
        if len(page) < want:
            break
        before_id = page[-1].audit_id
    name = f"audit-{'all' if all_orgs else who.org_id}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.csv"
    return Response(audit_csv(records), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})

# ---- the pages ----

@router.get("/console", include_in_schema=False)
async def console_root():
    return RedirectResponse("/console/", status_code=308)

@router.get("/console/{path:path}", include_in_schema=False)
async def console_static(path: str):
    root = STATIC_DIR.resolve()
    target = (root / (path or "index.html")).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise errors.not_found(f"No console file '{path}'.")
    return FileResponse(target, headers=STATIC_HEADERS)

