"""The org console's model: who is looking (Viewer), what it shows (the views of pool, members, keys,
usage and alerts), what it accepts (request bodies, credits and times) and how the authority's
errors read there. Its routes are in routes/console.py.

Every endpoint authenticates the API key exactly like the other routes
(`service.authenticate` → Caller; also the identity provider's access token,
or the console's SSO session: sso.py) and then decides by the role of the
signed-in user in the organization, read from the authority (ListMembers):

* owner / admin — the org's pool, members, allocations, top-ups, API keys,
  usage of every member, alert thresholds, webhook and alerts, and the org's
  audit log (who changed what, before → after);
* member — their own balance, usage, keys and the alerts of their allocation;
* individual (no organization) — their own balance, usage and keys.

The inference service's authority token needs the admin role for the changes
(allocations, top-ups, keys, alerts); org roles are enforced here, so no
member can act as an admin whatever that token may do. Everything goes to the
authority over gRPC; nothing here touches the database.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from credit.v1 import admin_pb2
from credit_service.errors import ALLOCATION_BELOW_COMMITTED, INSUFFICIENT_CREDITS, ROLE_REQUIRED
from credit_service.ids import ID
from credit_service.money import MAX_MILLICREDITS, format_credits, parse_credits
from credit_service.statement_csv import csv_cell

from . import errors
from .admin_client import AdminCalls
from .authority_client import AuthorityClient, error_info, to_api_error
from .service import client_request_id, credits_fields, iso_time

STATIC_DIR = Path(__file__).resolve().parent / "console_static"
ADMIN_ROLES = ("owner", "admin")
ROLE_NAMES = {admin_pb2.MEMBER_ROLE_OWNER: "owner", admin_pb2.MEMBER_ROLE_ADMIN: "admin",
               admin_pb2.MEMBER_ROLE_MEMBER: "member", admin_pb2.MEMBER_ROLE_UNSPECIFIED: "member"}
KIND_ENUMS = {"absolute": admin_pb2.ALERT_THRESHOLD_KIND_ABSOLUTE, "percent": admin_pb2.ALERT_THRESHOLD_KIND_PERCENT}
_KIND_NAMES = {v: k for k, v in KIND_ENUMS.items()}
_STATE_NAMES = {admin_pb2.ALERT_THRESHOLD_STATE_ARMED: "armed", admin_pb2.ALERT_THRESHOLD_STATE_FIRED: "fired"}
_STATUS_NAMES = {admin_pb2.ALERT_DELIVERY_STATUS_PENDING: "pending",
                 admin_pb2.ALERT_DELIVERY_STATUS_DELIVERED: "delivered",
                 admin_pb2.ALERT_DELIVERY_STATUS_FAILED: "failed",
                 admin_pb2.ALERT_DELIVERY_STATUS_NO_WEBHOOK: "no_webhook"}
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
    expires_at: StrictStr | None = Field(None, description="optional expiry, ISO 8601 (UTC without an offset), in "
                                                           "the future and at most two years ahead")
    ttl_seconds: StrictInt | None = Field(None, description="optional expiry in seconds from now, 1 to 63072000 "
                                                            "(two years); not with expires_at")


class WebhookBody(_Body):
    url: str = Field(description="http(s) URL the alerts are POSTed to; empty removes the webhook")
    secret: str = Field("", description="16-256 characters; signs each body (X-Credit-Signature: sha256=<hex>)")


class ThresholdBody(_Body):
    user_id: str = Field("", description="member whose allocation to watch; empty watches the pool")
    kind: str = Field(description="absolute (value in credits) or percent (value 0-100)")
    value: Amount = Field(description="credits remaining (absolute) or percent remaining (percent)")


# ---- helpers -------------------------------------------------------------

def millicredits(field: str, value: Any, *, allow_zero: bool) -> int:
    text = str(value).strip() if isinstance(value, (str, int, float)) and not isinstance(value, bool) else ""
    if isinstance(value, float) and value.is_integer():
        text = str(int(value))
    if not _CREDITS.fullmatch(text):
        raise invalid(field, f"{field} must be a number of credits with at most three decimals, e.g. 12.5",
                      "invalid_amount")
    amount = parse_credits(text)
    if amount > MAX_MILLICREDITS or (amount == 0 and not allow_zero):
        low = "0" if allow_zero else "0.001"
        raise invalid(field, f"{field} must be from {low} to {format_credits(MAX_MILLICREDITS)} credits",
                      "invalid_amount")
    return amount


def require_id(field: str, value: str) -> str:
    if not ID.fullmatch(value or ""):
        raise invalid(field, f"{field} must be an id (1-128 of A-Z a-z 0-9 . _ : @ -)", "invalid_id")
    return value


def key_request(body: KeyBody, user_id: str, org_id: str, name: str) -> admin_pb2.CreateApiKeyRequest:
    """CreateApiKey's request for a console key; the expiry's bounds are the authority's to check (400 naming
    the field, nothing written)."""
    request = admin_pb2.CreateApiKeyRequest(user_id=user_id, org_id=org_id, kind=admin_pb2.API_KEY_KIND_USER,
                                            name=name)
    if body.ttl_seconds is not None:
        if not 1 <= body.ttl_seconds <= 2**62:
            raise invalid("ttl_seconds", "ttl_seconds must be from 1 to 63072000 seconds (two years)")
        request.ttl_seconds = body.ttl_seconds
    if body.expires_at:
        try:
            moment = datetime.fromisoformat(body.expires_at)
            request.expires_at.FromDatetime(moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc))
        except (ValueError, OverflowError):
            raise invalid("expires_at", "expires_at must be an ISO 8601 time, e.g. 2030-01-31T12:00:00Z") from None
    return request


def invalid(param: str, message: str, code: str = "invalid_value") -> errors.ApiError:
    """400 in OpenAI's error body, `param` naming the field."""
    return errors.ApiError(400, message, "invalid_request_error", code, extra={"param": param})


def bad_request_field(error: grpc.aio.AioRpcError) -> str:
    """The field the authority's google.rpc.BadRequest names ("" when it sent none)."""
    status = rpc_status.from_call(error)
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return bad.field_violations[0].field if bad.field_violations else ""
    return ""


def console_error(error: grpc.aio.AioRpcError) -> errors.ApiError:
    """An authority error as the console shows it, told apart by ErrorInfo reason (never by message text)."""
    code, details = error.code(), error.details() or ""
    info = error_info(error)
    reason, meta = (info.reason, dict(info.metadata)) if info else ("", {})
    if reason == ROLE_REQUIRED:
        return errors.forbidden("The inference service's authority token lacks the admin role, so the console "
                                "cannot make changes; give that token spend+read+admin.")
    if reason == INSUFFICIENT_CREDITS and meta.get("funding", "").startswith("pool:"):  # an allocation change
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
    if code == grpc.StatusCode.INVALID_ARGUMENT and (name := bad_request_field(error)):
        # The authority's field, as the console's bodies name it (credits, not millicredits).
        return invalid(name.removesuffix("_millicredits"), details, "invalid_request")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return errors.conflict(details, "failed_precondition")
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return errors.conflict(details or "already exists", "already_exists")
    return to_api_error(error)


def console_admin(client: AuthorityClient) -> AdminCalls:
    """CreditAdmin through the service's authority client, errors as the console shows them."""
    return client.admin.with_errors(console_error)

@dataclass(frozen=True)
class Viewer:
    """Who is looking: the key's user, and their role in the org the console shows."""

    user_id: str
    key_id: str
    org_id: str  # "" for an individual user
    role: str  # owner | admin | member | individual
    members: tuple[admin_pb2.Member, ...] = ()
    client: AuthorityClient | None = field(default=None, compare=False, repr=False)  # to ask the authority
    signed_in_with: str = "api_key"  # api_key | access_token | session (SSO)
    operator: bool = False  # listed in CONSOLE_OPERATORS: sees every organization's audit log

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

    @property
    def admin(self) -> AdminCalls:
        """CreditAdmin, for what this viewer may do (checked by the routes), errors as the console shows them."""
        return console_admin(self.authority)

    def member_ids(self) -> set[str]:
        return {m.user_id for m in self.members}

    def require_operator(self) -> None:
        if not self.operator:
            raise errors.forbidden("Only an operator (CONSOLE_OPERATORS) may see every organization's audit log.")

    def require_admin(self) -> None:
        if not self.is_admin:
            where = f"organization '{self.org_id}'" if self.org_id else "an organization"
            raise errors.forbidden(f"Only an owner or admin of {where} may do this.")

    def account_scope(self, user_id: str | None, what: str = "usage") -> tuple[str, str]:
        """(org_id, user_id) a usage query or statement may cover: admins the org or one member, others
        themselves (an individual: ("", their id))."""
        if user_id:
            require_id("user_id", user_id)
        if self.is_admin:
            if user_id and user_id not in self.member_ids():
                raise errors.forbidden(f"'{user_id}' is not a member of '{self.org_id}'.")
            return self.org_id, user_id or ""
        if user_id and user_id != self.user_id:
            raise errors.forbidden(f"You may only see your own {what}.")
        return self.org_id, self.user_id


def member_dict(m: admin_pb2.Member) -> dict[str, Any]:
    return {"user_id": m.user_id, "role": ROLE_NAMES.get(m.role, "member"), "is_default": m.is_default,
            **credits_fields("allocation", m.allocation_millicredits), **credits_fields("used", m.used_millicredits),
            **credits_fields("held", m.held_millicredits),
            **credits_fields("remaining", m.available_millicredits), "joined_at": iso_time(m.joined_at)}


def org_dict(o: admin_pb2.Organization) -> dict[str, Any]:
    return {"org_id": o.org_id, "name": o.name, **credits_fields("pool_total", o.pool_total_millicredits),
            **credits_fields("allocated", o.allocated_millicredits),
            **credits_fields("unallocated", o.unallocated_millicredits),
            **credits_fields("used", o.used_millicredits), **credits_fields("held", o.held_millicredits),
            **credits_fields("remaining", o.pool_total_millicredits - o.used_millicredits)}


def key_dict(k: admin_pb2.ApiKey) -> dict[str, Any]:
    return {"key_id": k.key_id, "user_id": k.user_id, "org_id": k.org_id,
            "kind": "service" if k.kind == admin_pb2.API_KEY_KIND_SERVICE else "user", "name": k.name,
            "created_at": iso_time(k.created_at), "revoked_at": iso_time(k.revoked_at),
            "expires_at": iso_time(k.expires_at), "last_used_at": iso_time(k.last_used_at),
            "expired": k.HasField("expires_at") and k.expires_at.ToDatetime(timezone.utc) <= datetime.now(timezone.utc),
            "active": not k.HasField("revoked_at")}


def record_dict(r: admin_pb2.UsageRecord) -> dict[str, Any]:
    metadata = MessageToDict(r.request_metadata)
    for name in ("prompt_tokens", "completion_tokens", "total_tokens", "estimate_millicredits", "latency_ms"):
        if isinstance(metadata.get(name), float) and metadata[name].is_integer():
            metadata[name] = int(metadata[name])
    return {"created_at": iso_time(r.created_at), "request_id": client_request_id(r.request_id),
            "reservation_id": r.reservation_id, "user_id": r.user_id, "org_id": r.org_id,
            "funding_source": f"org:{r.org_id}" if r.org_id else "individual", "model": r.service_name,
            "service_type": r.service_type, **credits_fields("credits", r.credits_used_millicredits),
            "overrun": r.overrun, "late": r.late, "metadata": metadata}


def csv_of_records(records: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for r in records:
        meta = r["metadata"]
        row = {**r, "credits": r["credits"], "millicredits": r["credits_millicredits"],
               "provider": meta.get("provider"), "prompt_tokens": meta.get("prompt_tokens"),
               "completion_tokens": meta.get("completion_tokens"), "total_tokens": meta.get("total_tokens"),
               "end_user": meta.get("end_user")}
        writer.writerow([csv_cell(row.get(c)) for c in CSV_COLUMNS])
    return out.getvalue()


def time_range(start: datetime | None, end: datetime | None) -> tuple[datetime | None, datetime | None]:
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


def threshold_dict(t: admin_pb2.AlertThreshold) -> dict[str, Any]:
    kind = _KIND_NAMES.get(t.kind, "absolute")
    return {"threshold_id": t.threshold_id, "scope": "allocation" if t.user_id else "pool", "user_id": t.user_id,
            "kind": kind, "value": format_credits(t.value) if kind == "absolute" else t.value,
            "state": _STATE_NAMES.get(t.state, "armed"), **credits_fields("threshold", t.threshold_millicredits),
            **credits_fields("remaining", t.remaining_millicredits), "created_at": iso_time(t.created_at),
            "changed_at": iso_time(t.changed_at)}


def event_dict(e: admin_pb2.AlertEvent) -> dict[str, Any]:
    kind = _KIND_NAMES.get(e.kind, "absolute")
    return {"event_id": e.event_id, "threshold_id": e.threshold_id, "scope": "allocation" if e.user_id else "pool",
            "user_id": e.user_id, "kind": kind, "value": format_credits(e.value) if kind == "absolute" else e.value,
            **credits_fields("threshold", e.threshold_millicredits), **credits_fields("limit", e.limit_millicredits),
            **credits_fields("remaining", e.remaining_millicredits),
            "status": _STATUS_NAMES.get(e.status, "pending"), "attempts": e.attempts, "last_error": e.last_error,
            "created_at": iso_time(e.created_at), "delivered_at": iso_time(e.delivered_at),
            "next_attempt_at": iso_time(e.next_attempt_at),
            "deliveries": [{"attempt": d.attempt, "status_code": d.status_code or None, "error": d.error,
                            "duration_ms": d.duration_ms, "attempted_at": iso_time(d.attempted_at)}
                           for d in e.deliveries]}


# ---- the audit log (owners and admins: their org's records) ----

AUDIT_PAGE = 1000  # the most records the authority lists at once
_ACTION = re.compile(r"[A-Za-z]{1,64}")  # an RPC's name, e.g. SetAllocation


def audit_filters(actor: str | None, action: str | None) -> tuple[str, str]:
    """The actor and action filters as the authority takes them ("" for any); 400 naming the field."""
    actor, action = (actor or "").strip(), (action or "").strip()
    if len(actor) > 200 or not actor.isprintable():
        raise invalid("actor", "actor must be at most 200 printable characters: a token's name or an on-behalf-of "
                               "value, e.g. user:alice (session)")
    if action and not _ACTION.fullmatch(action):
        raise invalid("action", "action must be an RPC's name, e.g. SetAllocation")
    return actor, action


def audit_request(org_id: str, actor: str, action: str, start: datetime | None, end: datetime | None,
                  before_id: int, limit: int) -> admin_pb2.ListAuditRecordsRequest:
    request = admin_pb2.ListAuditRecordsRequest(org_id=org_id, actor=actor, action=action, before_id=before_id,
                                                limit=limit)
    if start is not None:
        request.start_time.FromDatetime(start)
    if end is not None:
        request.end_time.FromDatetime(end)
    return request


def field_changes(before: Any, after: Any) -> list[dict[str, Any]]:
    """The fields a change moved, by name: a created target's every field (before null), a deleted one's
    every field (after null)."""
    old = before if isinstance(before, dict) else {}
    new = after if isinstance(after, dict) else {}
    return [{"field": name, "before": old.get(name), "after": new.get(name)}
            for name in sorted(old.keys() | new.keys()) if old.get(name) != new.get(name)]


def audit_dict(r: admin_pb2.AuditRecord) -> dict[str, Any]:
    before, after = json.loads(r.before_json or "null"), json.loads(r.after_json or "null")
    return {"audit_id": r.audit_id, "at": iso_time(r.at), "actor": r.actor, "actor_kind": r.actor_kind,
            "on_behalf_of": r.on_behalf_of, "action": r.action, "target_kind": r.target_kind, "org_id": r.org_id,
            "target_id": r.target_id, "changes": field_changes(before, after), "before": before, "after": after,
            "request_id": r.request_id, "source": r.source, "forwarded_for": r.forwarded_for}


def webhook_dict(w: admin_pb2.AlertWebhook) -> dict[str, Any]:
    return {"url": w.url, "has_secret": w.has_secret, "updated_at": iso_time(w.updated_at)}
