"""The org console: its REST API under /api/v1/console/ and its static pages under /console/.

Every endpoint authenticates the API key exactly like the other routes
(`service.authenticate` → Caller) and then decides by the role of the key's
user in the organization, read from the authority (ListMembers):

* owner / admin — the org's pool, members, allocations, top-ups, API keys,
  usage of every member, alert thresholds, webhook and alerts;
* member — their own balance, usage, keys and the alerts of their allocation;
* individual (no organization) — their own balance, usage and keys.

The inference service's authority token needs the admin role for the changes
(allocations, top-ups, keys, alerts); org roles are enforced here, so no
member can act as an admin whatever that token may do. Everything goes to the
authority over gRPC; nothing here touches the database.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

import grpc
from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, RedirectResponse, Response
from google.protobuf.json_format import MessageToDict
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from credit.v1 import admin_pb2, types_pb2
from credit_service.errors import ALLOCATION_BELOW_COMMITTED, ROLE_REQUIRED
from credit_service.money import MAX_MILLICREDITS, format_credits, parse_credits

from . import errors
from .authority_client import AuthorityClient, error_info, funding_label, to_api_error
from .service import client_request_id, credits_fields

STATIC_DIR = Path(__file__).resolve().parent / "console_static"
ADMIN_ROLES = ("owner", "admin")
_ROLE_NAMES = {admin_pb2.MEMBER_ROLE_OWNER: "owner", admin_pb2.MEMBER_ROLE_ADMIN: "admin",
               admin_pb2.MEMBER_ROLE_MEMBER: "member", admin_pb2.MEMBER_ROLE_UNSPECIFIED: "member"}
_KIND_ENUMS = {"absolute": admin_pb2.ALERT_THRESHOLD_KIND_ABSOLUTE, "percent": admin_pb2.ALERT_THRESHOLD_KIND_PERCENT}
_KIND_NAMES = {v: k for k, v in _KIND_ENUMS.items()}
_STATE_NAMES = {admin_pb2.ALERT_THRESHOLD_STATE_ARMED: "armed", admin_pb2.ALERT_THRESHOLD_STATE_FIRED: "fired"}
_STATUS_NAMES = {admin_pb2.ALERT_DELIVERY_STATUS_PENDING: "pending",
                 admin_pb2.ALERT_DELIVERY_STATUS_DELIVERED: "delivered",
                 admin_pb2.ALERT_DELIVERY_STATUS_FAILED: "failed",
                 admin_pb2.ALERT_DELIVERY_STATUS_NO_WEBHOOK: "no_webhook"}
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
_KEY_ID = re.compile(r"ck_[0-9a-f]{16}")
_CREDITS = re.compile(r"\d{1,13}(\.\d{1,3})?")
# The console's pages load only from this origin: no CDN, no inline script.
STATIC_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
CSV_COLUMNS = ("created_at", "request_id", "reservation_id", "user_id", "org_id", "funding_source", "model",
               "service_type", "credits", "millicredits", "overrun", "late", "provider", "prompt_tokens",
               "completion_tokens", "total_tokens", "end_user", "metadata")


# ---- request bodies ------------------------------------------------------

Amount = StrictStr | StrictInt | StrictFloat  # credits as "12.5" or 12.5; never a boolean


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AllocationBody(_Body):
    user_id: str = Field(description="the member whose allocation to set")
    allocation: Amount = Field(description="new allocation in credits, e.g. \"250\" or \"12.5\"")


class TopUpBody(_Body):
    credits: Amount = Field(description="credits to add to the pool")
    purchase_reference: str = Field(description="invoice or payment id; unique per organization")
    purchase_amount: str = Field("", description="what was paid, e.g. \"99.00\" (optional)")
    purchase_currency: str = Field("", description="currency of purchase_amount, e.g. \"USD\" (optional)")


class KeyBody(_Body):
    user_id: str = Field("", description="owner of the new key (admins: any member; others: themselves)")
    name: str = Field("", description="label, at most 256 characters")


class WebhookBody(_Body):
    url: str = Field(description="http(s) URL the alerts are POSTed to; empty removes the webhook")
    secret: str = Field("", description="16-256 characters; signs each body (X-Credit-Signature: sha256=<hex>)")


class ThresholdBody(_Body):
    user_id: str = Field("", description="member whose allocation to watch; empty watches the pool")
    kind: str = Field(description="absolute (value in credits) or percent (value 0-100)")
    value: Amount = Field(description="credits remaining (absolute) or percent remaining (percent)")


# ---- helpers -------------------------------------------------------------

def _millicredits(field: str, value: Any, *, allow_zero: bool) -> int:
    text = str(value).strip() if isinstance(value, (str, int, float)) and not isinstance(value, bool) else ""
    if isinstance(value, float) and value.is_integer():
        text = str(int(value))
    if not _CREDITS.fullmatch(text):
        raise errors.bad_request(f"{field} must be a number of credits with at most three decimals, e.g. 12.5",
                                 "invalid_amount")
    amount = parse_credits(text)
    if amount > MAX_MILLICREDITS or (amount == 0 and not allow_zero):
        low = "0" if allow_zero else "0.001"
        raise errors.bad_request(f"{field} must be from {low} to {format_credits(MAX_MILLICREDITS)} credits",
                                 "invalid_amount")
    return amount


def _require_id(field: str, value: str) -> str:
    if not _ID.fullmatch(value or ""):
        raise errors.bad_request(f"{field} must be an id (1-128 of A-Z a-z 0-9 . _ : @ -)", "invalid_id")
    return value


def _ts(value) -> str | None:
    return value.ToDatetime(timezone.utc).isoformat() if value is not None and value.ByteSize() else None


def _console_error(method: str, error: grpc.aio.AioRpcError) -> errors.ApiError:
    code, details = error.code(), error.details() or ""
    info = error_info(error)
    reason, meta = (info.reason, dict(info.metadata)) if info else ("", {})
    if reason == ROLE_REQUIRED:
        return errors.forbidden("The inference service's authority token lacks the admin role, so the console "
                                "cannot make changes; give that token spend+read+admin.")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and method == "SetAllocation":
        return errors.ApiError(
            402, f"Not enough unallocated credits in the pool: this change needs "
                 f"{format_credits(int(meta.get('requested', '0')))} more credits, only "
                 f"{format_credits(int(meta.get('available', '0')))} are unallocated. Top up the pool or lower "
                 "another allocation first.", "insufficient_credits", "insufficient_unallocated_credits",
            extra={"unallocated": format_credits(int(meta.get("available", "0"))),
                   "requested": format_credits(int(meta.get("requested", "0")))})
    if reason == ALLOCATION_BELOW_COMMITTED:
        return errors.conflict(
            f"An allocation of {format_credits(int(meta['allocation']))} credits is below what {meta['user_id']} "
            f"already used or holds ({format_credits(int(meta['committed']))} credits).", "failed_precondition")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return errors.conflict(details, "failed_precondition")
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return errors.conflict(details or "already exists", "already_exists")
    return to_api_error(error)


@dataclass(frozen=True)
class Viewer:
    """Who is looking: the key's user, and their role in the org the console shows."""

    user_id: str
    key_id: str
    org_id: str  # "" for an individual user
    role: str  # owner | admin | member | individual
    members: tuple[admin_pb2.Member, ...] = ()
    client: AuthorityClient | None = field(default=None, compare=False, repr=False)  # to ask the authority

    @property
    def is_admin(self) -> bool:
        return self.role in ADMIN_ROLES

    @property
    def view(self) -> str:
        return "admin" if self.is_admin else self.role if self.role == "individual" else "member"

    @property
    def authority(self) -> AuthorityClient:
        if self.client is None:
            raise RuntimeError("a Viewer is made by the viewer dependency, with the service's authority client")
        return self.client

    async def admin(self, method: str, request: Any) -> Any:
        return await admin_rpc(self.authority, method, request)

    def member_ids(self) -> set[str]:
        return {m.user_id for m in self.members}

    def require_admin(self) -> None:
        if not self.is_admin:
            where = f"organization '{self.org_id}'" if self.org_id else "an organization"
            raise errors.forbidden(f"Only an owner or admin of {where} may do this.")

    def usage_scope(self, user_id: str | None) -> tuple[str, str]:
        """(org_id, user_id) a usage query may cover: admins the org or one member, others themselves."""
        if user_id:
            _require_id("user_id", user_id)
        if self.is_admin:
            if user_id and user_id not in self.member_ids():
                raise errors.forbidden(f"'{user_id}' is not a member of '{self.org_id}'.")
            return self.org_id, user_id or ""
        if user_id and user_id != self.user_id:
            raise errors.forbidden("You may only see your own usage.")
        return self.org_id, self.user_id


def _member_dict(m: admin_pb2.Member) -> dict[str, Any]:
    return {"user_id": m.user_id, "role": _ROLE_NAMES.get(m.role, "member"), "is_default": m.is_default,
            **credits_fields("allocation", m.allocation_millicredits), **credits_fields("used", m.used_millicredits),
            **credits_fields("held", m.held_millicredits),
            **credits_fields("remaining", m.available_millicredits), "joined_at": _ts(m.joined_at)}


def _org_dict(o: admin_pb2.Organization) -> dict[str, Any]:
    return {"org_id": o.org_id, "name": o.name, **credits_fields("pool_total", o.pool_total_millicredits),
            **credits_fields("allocated", o.allocated_millicredits),
            **credits_fields("unallocated", o.unallocated_millicredits),
            **credits_fields("used", o.used_millicredits), **credits_fields("held", o.held_millicredits),
            **credits_fields("remaining", o.pool_total_millicredits - o.used_millicredits)}


def _key_dict(k: admin_pb2.ApiKey) -> dict[str, Any]:
    return {"key_id": k.key_id, "user_id": k.user_id, "org_id": k.org_id,
            "kind": "service" if k.kind == admin_pb2.API_KEY_KIND_SERVICE else "user", "name": k.name,
            "created_at": _ts(k.created_at), "revoked_at": _ts(k.revoked_at), "active": not k.HasField("revoked_at")}


def _record_dict(r: admin_pb2.UsageRecord) -> dict[str, Any]:
    metadata = MessageToDict(r.request_metadata)
    for name in ("prompt_tokens", "completion_tokens", "total_tokens", "estimate_millicredits", "latency_ms"):
        if isinstance(metadata.get(name), float) and metadata[name].is_integer():
            metadata[name] = int(metadata[name])
    return {"created_at": _ts(r.created_at), "request_id": client_request_id(r.request_id),
            "reservation_id": r.reservation_id, "user_id": r.user_id, "org_id": r.org_id,
            "funding_source": f"org:{r.org_id}" if r.org_id else "individual", "model": r.service_name,
            "service_type": r.service_type, **credits_fields("credits", r.credits_used_millicredits),
            "overrun": r.overrun, "late": r.late, "metadata": metadata}


def _csv_cell(value: Any) -> str:
    text = "" if value is None else json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
    # Keep spreadsheets from running a cell as a formula.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _usage_csv(records: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for r in records:
        meta = r["metadata"]
        row = {**r, "credits": r["credits"], "millicredits": r["credits_millicredits"],
               "provider": meta.get("provider"), "prompt_tokens": meta.get("prompt_tokens"),
               "completion_tokens": meta.get("completion_tokens"), "total_tokens": meta.get("total_tokens"),
               "end_user": meta.get("end_user")}
        writer.writerow([_csv_cell(row.get(c)) for c in CSV_COLUMNS])
    return out.getvalue()


def _time_range(start: datetime | None, end: datetime | None) -> tuple[datetime | None, datetime | None]:
    def utc(value: datetime | None) -> datetime | None:
        return None if value is None else value if value.tzinfo else value.replace(tzinfo=timezone.utc)

    start, end = utc(start), utc(end)
    if start and end and start >= end:
        raise errors.bad_request("end must be after start", "invalid_range")
    for value in (start, end):
        if value is not None and not (datetime(1970, 1, 2, tzinfo=timezone.utc) <= value
                                      <= datetime(9999, 1, 1, tzinfo=timezone.utc)):
            raise errors.bad_request("start and end must be dates between 1970 and 9999", "invalid_range")
    return start, end


def _threshold_dict(t: admin_pb2.AlertThreshold) -> dict[str, Any]:
    kind = _KIND_NAMES.get(t.kind, "absolute")
    return {"threshold_id": t.threshold_id, "scope": "allocation" if t.user_id else "pool", "user_id": t.user_id,
            "kind": kind, "value": format_credits(t.value) if kind == "absolute" else t.value,
            "state": _STATE_NAMES.get(t.state, "armed"), **credits_fields("threshold", t.threshold_millicredits),
            **credits_fields("remaining", t.remaining_millicredits), "created_at": _ts(t.created_at),
            "changed_at": _ts(t.changed_at)}


def _event_dict(e: admin_pb2.AlertEvent) -> dict[str, Any]:
    kind = _KIND_NAMES.get(e.kind, "absolute")
    return {"event_id": e.event_id, "threshold_id": e.threshold_id, "scope": "allocation" if e.user_id else "pool",
            "user_id": e.user_id, "kind": kind, "value": format_credits(e.value) if kind == "absolute" else e.value,
            **credits_fields("threshold", e.threshold_millicredits), **credits_fields("limit", e.limit_millicredits),
            **credits_fields("remaining", e.remaining_millicredits),
            "status": _STATUS_NAMES.get(e.status, "pending"), "attempts": e.attempts, "last_error": e.last_error,
            "created_at": _ts(e.created_at), "delivered_at": _ts(e.delivered_at),
            "next_attempt_at": _ts(e.next_attempt_at),
            "deliveries": [{"attempt": d.attempt, "status_code": d.status_code or None, "error": d.error,
                            "duration_ms": d.duration_ms, "attempted_at": _ts(d.attempted_at)}
                           for d in e.deliveries]}


def _webhook_dict(w: admin_pb2.AlertWebhook) -> dict[str, Any]:
    return {"url": w.url, "has_secret": w.has_secret, "updated_at": _ts(w.updated_at)}


# ---- the routes (module-level; the service comes from app state) -----------

async def admin_rpc(client: AuthorityClient, method: str, request: Any) -> Any:
    """CreditAdmin.<method> through the service's authority client, errors as the console shows them."""
    try:
        return await client.admin(method, request)
    except grpc.aio.AioRpcError as error:
        raise _console_error(method, error) from None

async def viewer(request: Request) -> Viewer:
    """The signed-in key's user and their role in the org shown (a dependency of every console route)."""
    service = request.app.state.service
    caller = await service.authenticate(request)
    key = caller.key
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
    if not org_id:
        return Viewer(key.user_id, key.key_id, "", "individual", client=service.client)
    members = (await admin_rpc(service.client, "ListMembers", admin_pb2.ListMembersRequest(org_id=org_id))).members
    me = next((m for m in members if m.user_id == key.user_id), None)
    if me is None:
        raise errors.forbidden(f"You are not a member of organization '{org_id}'.")
    return Viewer(key.user_id, key.key_id, org_id, _ROLE_NAMES.get(me.role, "member"), tuple(members),
                  client=service.client)

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
    """The signed-in key's user, their role and view, and their own balance."""
    balance = await who.authority.balance(who.user_id, who.org_id)
    org_name = ""
    if who.org_id:
        org_name = (await who.admin("GetOrganization", admin_pb2.GetOrganizationRequest(org_id=who.org_id))).name
    return {"user_id": who.user_id, "key_id": who.key_id, "org_id": who.org_id, "org_name": org_name,
            "role": who.role, "view": who.view,
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
    org = await who.admin("GetOrganization", admin_pb2.GetOrganizationRequest(org_id=who.org_id))
    return {"org": _org_dict(org), "members": [_member_dict(m) for m in who.members]}

@router.post("/api/v1/console/org/allocations", tags=TAGS, responses=WRITES)
async def set_allocation(body: AllocationBody, who: Viewer = Depends(viewer)):
    """Sets a member's allocation (their cap inside the pool)."""
    who.require_admin()
    _require_id("user_id", body.user_id)
    if body.user_id not in who.member_ids():
        raise errors.not_found(f"'{body.user_id}' is not a member of '{who.org_id}'.")
    amount = _millicredits("allocation", body.allocation, allow_zero=True)
    member = await who.admin("SetAllocation", admin_pb2.SetAllocationRequest(
        org_id=who.org_id, user_id=body.user_id, allocation_millicredits=amount,
        allocated_by=f"console:{who.user_id}"))
    return _member_dict(member)

@router.post("/api/v1/console/org/top-ups", tags=TAGS, responses=WRITES)
async def top_up(body: TopUpBody, who: Viewer = Depends(viewer)):
    """Adds purchased credits to the pool, recorded under a purchase reference (idempotent per reference)."""
    who.require_admin()
    amount = _millicredits("credits", body.credits, allow_zero=False)
    reference = body.purchase_reference.strip()
    if not reference or len(reference) > 128 or not reference.isprintable():
        raise errors.bad_request("purchase_reference is required: 1-128 printable characters (the invoice or "
                                 "payment id)", "invalid_purchase_reference")
    org = await who.admin("TopUpPool", admin_pb2.TopUpPoolRequest(
        org_id=who.org_id, amount_millicredits=amount, purchase_reference=reference,
        purchase_amount=body.purchase_amount.strip(), purchase_currency=body.purchase_currency.strip()))
    return _org_dict(org)

# ---- API keys ----

async def visible_keys(who: Viewer) -> list[admin_pb2.ApiKey]:
    own = (await who.admin("ListApiKeys", admin_pb2.ListApiKeysRequest(user_id=who.user_id))).keys
    if not who.is_admin:
        return list(own)
    org_keys = (await who.admin("ListApiKeys", admin_pb2.ListApiKeysRequest(org_id=who.org_id))).keys
    seen = {k.key_id: k for k in (*org_keys, *own)}
    return sorted(seen.values(), key=lambda k: (-k.created_at.seconds, k.key_id))

@router.get("/api/v1/console/keys", tags=TAGS, responses=READS)
async def list_keys(who: Viewer = Depends(viewer)):
    """API keys: admins see the org's keys and their own; everyone else their own."""
    return {"data": [_key_dict(k) for k in await visible_keys(who)]}

@router.post("/api/v1/console/keys", tags=TAGS, responses=WRITES)
async def create_key(body: KeyBody, who: Viewer = Depends(viewer)):
    """Creates a user key (bound to the org for members); the secret is shown once."""
    user_id = body.user_id or who.user_id
    _require_id("user_id", user_id)
    if user_id != who.user_id:
        who.require_admin()
        if user_id not in who.member_ids():
            raise errors.not_found(f"'{user_id}' is not a member of '{who.org_id}'.")
    name = body.name.strip()
    if len(name) > 256 or not name.isprintable():
        raise errors.bad_request("name must be at most 256 printable characters", "invalid_name")
    created = await who.admin("CreateApiKey", admin_pb2.CreateApiKeyRequest(
        user_id=user_id, org_id=who.org_id, kind=admin_pb2.API_KEY_KIND_USER, name=name or "console key"))
    return {**_key_dict(created.key), "secret": created.secret}

@router.delete("/api/v1/console/keys/{key_id}", tags=TAGS, responses=WRITES)
async def revoke_key(key_id: str = PathParam(description="key to revoke, e.g. ck_0123456789abcdef"),
                     who: Viewer = Depends(viewer)):
    """Revokes a key: admins any key of the org (or their own), others their own."""
    if not _KEY_ID.fullmatch(key_id):
        raise errors.bad_request("key_id must look like ck_0123456789abcdef", "invalid_key_id")
    if key_id not in {k.key_id for k in await visible_keys(who)}:
        raise errors.not_found(f"No key '{key_id}' that you may revoke.")
    return _key_dict(await who.admin("RevokeApiKey", admin_pb2.RevokeApiKeyRequest(key_id=key_id)))

# ---- usage ----

async def query(who: Viewer, user_id: str | None, start, end, group_by: admin_pb2.UsageGroupBy.ValueType,
                limit: int):
    org_id, user = who.usage_scope(user_id)
    request = admin_pb2.QueryUsageRequest(org_id=org_id, user_id=user, group_by=group_by, limit=limit)
    start, end = _time_range(start, end)
    if start is not None:
        request.start_time.FromDatetime(start)
    if end is not None:
        request.end_time.FromDatetime(end)
    return await who.admin("QueryUsage", request)

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
    return {"data": [_record_dict(r) for r in result.records], "total_requests": result.total_requests,
            **credits_fields("total", result.total_millicredits)}

@router.get("/api/v1/console/usage/export.csv", tags=TAGS, responses=READS,
            response_class=Response)
async def usage_csv(who: Viewer = Depends(viewer), start: datetime | None = start_param(),
                    end: datetime | None = end_param(), user_id: str | None = user_param(),
                    limit: int = Query(10_000, ge=1, le=10_000)):
    """The same rows as /usage/records as CSV (newest first)."""
    result = await query(who, user_id, start, end, admin_pb2.USAGE_GROUP_BY_UNSPECIFIED, limit)
    name = f"usage-{who.org_id or who.user_id}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.csv"
    return Response(_usage_csv([_record_dict(r) for r in result.records]), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})

# ---- alerts ----

@router.get("/api/v1/console/alerts", tags=TAGS, responses=READS)
async def alerts(who: Viewer = Depends(viewer), limit: int = Query(50, ge=1, le=1000)):
    """Thresholds with their state and the alerts sent: admins the org's, members their allocation's."""
    if not who.org_id:
        return {"webhook": None, "thresholds": [], "events": []}
    user = "" if who.is_admin else who.user_id
    thresholds, events = await asyncio.gather(
        who.admin("ListAlertThresholds", admin_pb2.ListAlertThresholdsRequest(org_id=who.org_id, user_id=user)),
        who.admin("ListAlertEvents", admin_pb2.ListAlertEventsRequest(org_id=who.org_id, user_id=user,
                                                                      limit=limit)))
    webhook = None
    if who.is_admin:
        webhook = _webhook_dict((await who.admin("GetAlertWebhook", admin_pb2.GetAlertWebhookRequest(
            org_id=who.org_id))).webhook)
    return {"webhook": webhook, "thresholds": [_threshold_dict(t) for t in thresholds.thresholds],
            "events": [_event_dict(e) for e in events.events]}

@router.post("/api/v1/console/alerts/webhook", tags=TAGS, responses=WRITES)
async def set_webhook(body: WebhookBody, who: Viewer = Depends(viewer)):
    """Sets where the org's alerts are POSTed and the secret that signs them (empty url removes it)."""
    who.require_admin()
    result = await who.admin("SetAlertWebhook", admin_pb2.SetAlertWebhookRequest(
        org_id=who.org_id, url=body.url.strip(), secret=body.secret))
    return _webhook_dict(result.webhook)

@router.post("/api/v1/console/alerts/thresholds", tags=TAGS, responses=WRITES)
async def create_threshold(body: ThresholdBody, who: Viewer = Depends(viewer)):
    """Adds a low-balance threshold on the pool or on a member's allocation."""
    who.require_admin()
    if body.user_id:
        _require_id("user_id", body.user_id)
        if body.user_id not in who.member_ids():
            raise errors.not_found(f"'{body.user_id}' is not a member of '{who.org_id}'.")
    if body.kind == "absolute":
        value = _millicredits("value", body.value, allow_zero=True)
    elif body.kind == "percent":
        text = str(body.value).strip()
        if isinstance(body.value, bool) or not re.fullmatch(r"\d{1,3}(\.0+)?", text) or float(text) > 100:
            raise errors.bad_request("a percent threshold is a whole number from 0 to 100", "invalid_percent")
        value = int(float(text))
    else:
        raise errors.bad_request("kind must be 'absolute' (credits) or 'percent'", "invalid_kind")
    result = await who.admin("CreateAlertThreshold", admin_pb2.CreateAlertThresholdRequest(
        org_id=who.org_id, user_id=body.user_id, kind=_KIND_ENUMS[body.kind], value=value))
    return _threshold_dict(result.threshold)

@router.delete("/api/v1/console/alerts/thresholds/{threshold_id}", tags=TAGS, responses=WRITES)
async def delete_threshold(threshold_id: int = PathParam(ge=1, le=2**63 - 1), who: Viewer = Depends(viewer)):
    """Removes a threshold."""
    who.require_admin()
    await who.admin("DeleteAlertThreshold", admin_pb2.DeleteAlertThresholdRequest(
        org_id=who.org_id, threshold_id=threshold_id))
    return {"deleted": True, "threshold_id": threshold_id}

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

