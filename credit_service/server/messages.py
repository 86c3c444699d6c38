"""credit.v1 messages <-> the domain's values: every conversion the two services make.

Requests come in as protobuf and leave this module as plain values (validated where the wire
allows what the domain does not: non-finite numbers, timestamps out of range, unknown enums);
the domain's dataclasses (credit_service.model) leave as protobuf.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from credit.v1 import admin_pb2, authority_pb2, types_pb2

from ..errors import InvalidArgument
from ..model import (
    Account,
    AlertEvent,
    AlertThreshold,
    AlertWebhook,
    ApiKeyRow,
    AuditRecord,
    Balance,
    Forecast,
    ForecastLine,
    MemberRow,
    OrgSummary,
    PaymentOutcome,
    PlatformCredentialRow,
    Purchase,
    RateLimitRow,
    Statement,
    StatementLine,
    StatementUsage,
    UsageGroup,
    UsageRecord,
)


def _value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise InvalidArgument("metadata", "numbers must be finite (no NaN or Infinity)")
        # Struct numbers are doubles; token counts and the like read better as integers.
        return int(number) if number.is_integer() and abs(number) <= 2**53 else number
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_value(v) for v in value.list_value.values]
    if kind in ("string_value", "bool_value"):
        return getattr(value, kind)
    return None


def struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    return {key: _value(item) for key, item in message.fields.items()}


def dict_to_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def timestamp(value: Any) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value.astimezone(timezone.utc))
    return ts


def time_field(message: Any, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    try:
        return getattr(message, field).ToDatetime(timezone.utc)
    except ValueError as error:  # seconds or nanos outside google.protobuf.Timestamp's range
        raise InvalidArgument(field, str(error)) from None


def funding_message(kind: str, org_id: str | None) -> types_pb2.Funding:
    if kind == "org":
        return types_pb2.Funding(kind=types_pb2.Funding.ORG, org_id=org_id or "")
    return types_pb2.Funding(kind=types_pb2.Funding.INDIVIDUAL)


def rate_limit_status(limits: dict[str, list[int]] | None) -> authority_pb2.RateLimitStatus | None:
    """What is left of a granted Reserve's per-minute limits (credit_limit_try's status), None when none applied."""
    if not limits:
        return None
    windows = {kind: authority_pb2.RateLimitWindow(limit=int(v[0]), remaining=int(v[1]), reset_ms=int(v[2]))
               for kind, v in limits.items()}
    return authority_pb2.RateLimitStatus(**windows)


def balance_response(balance: Balance) -> authority_pb2.GetBalanceResponse:
    return authority_pb2.GetBalanceResponse(
        funding=funding_message(balance.funding_kind, balance.org_id), limit_millicredits=balance.limit_mc,
        used_millicredits=balance.used_mc, held_millicredits=balance.held_mc,
        available_millicredits=balance.available_mc)


ROLE_NAMES = {admin_pb2.MEMBER_ROLE_OWNER: "owner", admin_pb2.MEMBER_ROLE_ADMIN: "admin",
               admin_pb2.MEMBER_ROLE_MEMBER: "member", admin_pb2.MEMBER_ROLE_UNSPECIFIED: "member"}
_ROLE_ENUMS = {"owner": admin_pb2.MEMBER_ROLE_OWNER, "admin": admin_pb2.MEMBER_ROLE_ADMIN,
               "member": admin_pb2.MEMBER_ROLE_MEMBER}
KEY_KINDS = {admin_pb2.API_KEY_KIND_UNSPECIFIED: "user", admin_pb2.API_KEY_KIND_USER: "user",
              admin_pb2.API_KEY_KIND_SERVICE: "service"}
GROUPINGS = {admin_pb2.USAGE_GROUP_BY_UNSPECIFIED: None, admin_pb2.USAGE_GROUP_BY_USER: "user",
              admin_pb2.USAGE_GROUP_BY_MODEL: "model", admin_pb2.USAGE_GROUP_BY_SERVICE_TYPE: "service_type",
              admin_pb2.USAGE_GROUP_BY_DAY: "day"}


def enum_value(table: dict, value: int, field: str) -> Any:
    if value not in table:
        raise InvalidArgument(field, f"unknown value {value}")
    return table[value]


def org_message(org: OrgSummary) -> admin_pb2.Organization:
    return admin_pb2.Organization(
        org_id=org.org_id, name=org.name, pool_total_millicredits=org.pool_total_mc,
        allocated_millicredits=org.allocated_mc, unallocated_millicredits=org.pool_total_mc - org.allocated_mc,
        used_millicredits=org.used_mc, held_millicredits=org.held_mc, created_at=timestamp(org.created_at))


def member_message(m: MemberRow) -> admin_pb2.Member:
    return admin_pb2.Member(
        org_id=m.org_id, user_id=m.user_id, role=_ROLE_ENUMS[m.role], is_default=m.is_default,
        allocation_millicredits=m.allocation_mc, used_millicredits=m.used_mc, held_millicredits=m.held_mc,
        available_millicredits=m.allocation_mc - m.used_mc - m.held_mc, joined_at=timestamp(m.joined_at))


def key_message(k: ApiKeyRow) -> admin_pb2.ApiKey:
    return admin_pb2.ApiKey(
        key_id=k.key_id, user_id=k.user_id, org_id=k.org_id or "",
        kind=admin_pb2.API_KEY_KIND_SERVICE if k.kind == "service" else admin_pb2.API_KEY_KIND_USER,
        name=k.name, created_at=timestamp(k.created_at), revoked_at=timestamp(k.revoked_at),
        expires_at=timestamp(k.expires_at), last_used_at=timestamp(k.last_used_at))


def usage_group_message(group: UsageGroup) -> admin_pb2.UsageGroup:
    return admin_pb2.UsageGroup(key=group.key, requests=group.requests, credits_used_millicredits=group.credits_used)


def usage_record_message(record: UsageRecord) -> admin_pb2.UsageRecord:
    return admin_pb2.UsageRecord(
        reservation_id=str(record.reservation_id), org_id=record.org_id or "", user_id=record.user_id,
        funding_kind=types_pb2.Funding.ORG if record.funding_kind == "org" else types_pb2.Funding.INDIVIDUAL,
        service_type=record.service_type, service_name=record.service_name,
        credits_used_millicredits=record.credits_used, request_id=record.request_id,
        request_metadata=dict_to_struct(record.request_metadata), overrun=record.overrun, late=record.late,
        created_at=timestamp(record.created_at), caller=record.caller)


def audit_record_message(record: AuditRecord) -> admin_pb2.AuditRecord:
    return admin_pb2.AuditRecord(
        audit_id=record.audit_id, at=timestamp(record.at), actor=record.actor, actor_kind=record.actor_kind,
        on_behalf_of=record.on_behalf_of, action=record.action, target_kind=record.target_kind,
        org_id=record.org_id or "", target_id=record.target_id,
        before_json=json.dumps(record.before, sort_keys=True), after_json=json.dumps(record.after, sort_keys=True),
        request_id=record.request_id, source=record.source, forwarded_for=record.forwarded_for)


def platform_message(row: PlatformCredentialRow) -> admin_pb2.PlatformCredential:
    return admin_pb2.PlatformCredential(
        name=row.name, caller=row.caller, org_ids=row.org_ids, individuals=row.individuals, roles=row.roles,
        created_by=row.created_by, created_at=timestamp(row.created_at),
        rotated_at=timestamp(row.rotated_at), previous_secret_valid_until=timestamp(row.previous_valid_until),
        revoked_at=timestamp(row.revoked_at))


_KINDS = {admin_pb2.ALERT_THRESHOLD_KIND_ABSOLUTE: "absolute", admin_pb2.ALERT_THRESHOLD_KIND_PERCENT: "percent"}
_KIND_ENUMS = {name: value for value, name in _KINDS.items()}
_STATES = {"armed": admin_pb2.ALERT_THRESHOLD_STATE_ARMED, "fired": admin_pb2.ALERT_THRESHOLD_STATE_FIRED}
_STATUSES = {"pending": admin_pb2.ALERT_DELIVERY_STATUS_PENDING,
             "delivered": admin_pb2.ALERT_DELIVERY_STATUS_DELIVERED,
             "failed": admin_pb2.ALERT_DELIVERY_STATUS_FAILED,
             "no_webhook": admin_pb2.ALERT_DELIVERY_STATUS_NO_WEBHOOK}


def alert_kind_name(kind: int) -> str:
    name = _KINDS.get(kind)  # type: ignore[call-overload]
    if name is None:
        raise InvalidArgument("kind", "must be ALERT_THRESHOLD_KIND_ABSOLUTE or ALERT_THRESHOLD_KIND_PERCENT")
    return name


def alert_webhook_message(org_id: str, webhook: AlertWebhook | None) -> admin_pb2.AlertWebhook:
    if webhook is None:
        return admin_pb2.AlertWebhook(org_id=org_id)
    return admin_pb2.AlertWebhook(org_id=webhook.org_id, url=webhook.url, has_secret=bool(webhook.secret),
                                  updated_at=timestamp(webhook.updated_at))


def alert_threshold_message(threshold: AlertThreshold) -> admin_pb2.AlertThreshold:
    t = threshold
    return admin_pb2.AlertThreshold(
        org_id=t.org_id, threshold_id=t.threshold_id, user_id=t.user_id or "",
        kind=_KIND_ENUMS[t.kind], value=t.value, state=_STATES[t.state],
        threshold_millicredits=t.threshold_mc, remaining_millicredits=t.remaining_mc,
        created_at=timestamp(t.created_at), changed_at=timestamp(t.changed_at))


def alert_event_message(event: AlertEvent) -> admin_pb2.AlertEvent:
    e = event
    return admin_pb2.AlertEvent(
        org_id=e.org_id, event_id=e.event_id, threshold_id=e.threshold_id, user_id=e.user_id or "",
        kind=_KIND_ENUMS[e.kind], value=e.value, threshold_millicredits=e.threshold_mc, limit_millicredits=e.limit_mc,
        remaining_millicredits=e.remaining_mc, status=_STATUSES[e.status], attempts=e.attempts,
        last_error=e.last_error, created_at=timestamp(e.created_at), delivered_at=timestamp(e.delivered_at),
        next_attempt_at=timestamp(e.next_attempt_at) if e.status == "pending" else None,
        deliveries=[admin_pb2.AlertDeliveryAttempt(
            attempt=d.attempt, url=d.url, status_code=d.status_code or 0, error=d.error,
            duration_ms=d.duration_ms, attempted_at=timestamp(d.attempted_at)) for d in e.deliveries])


PURCHASE_STATUSES = {"pending": admin_pb2.PURCHASE_STATUS_PENDING, "paid": admin_pb2.PURCHASE_STATUS_PAID,
                     "partially_refunded": admin_pb2.PURCHASE_STATUS_PARTIALLY_REFUNDED,
                     "refunded": admin_pb2.PURCHASE_STATUS_REFUNDED, "expired": admin_pb2.PURCHASE_STATUS_EXPIRED}


def purchase_message(p: Purchase) -> admin_pb2.Purchase:
    return admin_pb2.Purchase(
        org_id=p.org_id, session_id=p.session_id, status=PURCHASE_STATUSES[p.status],
        credits_millicredits=p.credits_mc, amount_minor=p.amount_minor, currency=p.currency,
        refunded_millicredits=p.refunded_mc, overdrawn=p.overdrawn, created_by=p.created_by,
        created_at=timestamp(p.created_at), paid_at=timestamp(p.paid_at), payment_intent=p.payment_intent or "")


def payment_outcome_message(outcome: PaymentOutcome) -> admin_pb2.ApplyPaymentEventResponse:
    return admin_pb2.ApplyPaymentEventResponse(
        event_id=outcome.event_id, event_type=outcome.event_type, outcome=outcome.outcome,
        purchase=purchase_message(outcome.purchase) if outcome.purchase is not None else None)


# ---- statements and forecasts ----


def account_message(account: Account) -> admin_pb2.AccountRef:
    return admin_pb2.AccountRef(org_id=account.org_id or "", user_id=account.user_id or "")


def statement_line_message(line: StatementLine) -> admin_pb2.StatementLine:
    return admin_pb2.StatementLine(at=timestamp(line.at), kind=line.kind, amount_millicredits=line.amount_mc,
                                   source=line.source, reference=line.reference, note=line.note)


def statement_usage_message(usage: StatementUsage) -> admin_pb2.StatementUsage:
    return admin_pb2.StatementUsage(key=usage.key, requests=usage.requests,
                                    credits_used_millicredits=usage.credits_used_mc)


def statement_message(s: Statement) -> admin_pb2.Statement:
    return admin_pb2.Statement(
        account=account_message(s.account), start_time=timestamp(s.start), end_time=timestamp(s.end),
        opening_balance_millicredits=s.opening_mc, closing_balance_millicredits=s.closing_mc,
        credits_in=[statement_line_message(x) for x in s.credits_in],
        adjustments=[statement_line_message(x) for x in s.adjustments],
        allocation_changes=[statement_line_message(x) for x in s.allocation_changes],
        credits_in_millicredits=s.credits_in_mc, adjustments_millicredits=s.adjustments_mc,
        allocation_changes_millicredits=s.allocation_changes_mc, usage_millicredits=s.usage_mc,
        usage_by_model=[statement_usage_message(u) for u in s.usage_by_model],
        usage_by_member=[statement_usage_message(u) for u in s.usage_by_member])


def forecast_line_message(line: ForecastLine) -> admin_pb2.ForecastLine:
    return admin_pb2.ForecastLine(user_id=line.user_id or "", remaining_millicredits=line.remaining_mc,
                                  used_in_window_millicredits=line.used_in_window_mc,
                                  burn_rate_millicredits_per_day=line.burn_rate_mc_per_day,
                                  runs_out_at=timestamp(line.runs_out_at))


def forecast_message(f: Forecast) -> admin_pb2.Forecast:
    return admin_pb2.Forecast(account=account_message(f.account), window_days=f.window_days,
                              computed_at=timestamp(f.computed_at), total=forecast_line_message(f.total),
                              members=[forecast_line_message(m) for m in f.members])


# ---- rate limits ----


def limits_of(request: admin_pb2.SetRateLimitRequest) -> dict[str, int | None]:
    """The limits a SetRateLimit sets (None: left as they are), by the domain's names."""
    fields: dict[str, Any] = {"rpm": "requests_per_minute", "tpm": "tokens_per_minute", "max_parallel": "max_parallel",
              "credits_per_day_mc": "credits_per_day_millicredits",
              "credits_per_month_mc": "credits_per_month_millicredits"}
    return {name: getattr(request, field) if request.HasField(field) else None for name, field in fields.items()}


def rate_limit_message(r: RateLimitRow) -> admin_pb2.RateLimit:
    return admin_pb2.RateLimit(
        scope=r.scope.scope, org_id=r.scope.org_id or "", user_id=r.scope.user_id or "",
        key_id=r.scope.key_id or "", requests_per_minute=r.rpm, tokens_per_minute=r.tpm, max_parallel=r.max_parallel,
        credits_per_day_millicredits=r.credits_per_day_mc, credits_per_month_millicredits=r.credits_per_month_mc,
        requests_remaining=r.requests_remaining, tokens_remaining=r.tokens_remaining, open_holds=r.open_holds,
        credits_today_millicredits=r.credits_today_mc, credits_this_month_millicredits=r.credits_this_month_mc,
        updated_at=timestamp(r.updated_at), updated_by=r.updated_by)
