"""Low-balance alerts on the wire: storage rows → credit.v1 messages (used by server.AdminServicer)."""

from __future__ import annotations

from datetime import timezone
from typing import Any

from google.protobuf import timestamp_pb2

from credit.v1 import admin_pb2

from .errors import InvalidArgument

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


def _ts(value: Any) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value.astimezone(timezone.utc))
    return ts


def alert_webhook_message(org_id: str, row: dict[str, Any] | None) -> admin_pb2.AlertWebhook:
    if row is None:
        return admin_pb2.AlertWebhook(org_id=org_id)
    return admin_pb2.AlertWebhook(org_id=row["org_id"], url=row["url"], has_secret=bool(row["secret"]),
                                  updated_at=_ts(row["updated_at"]))


def alert_threshold_message(row: dict[str, Any]) -> admin_pb2.AlertThreshold:
    return admin_pb2.AlertThreshold(
        org_id=row["org_id"], threshold_id=row["threshold_id"], user_id=row["user_id"] or "",
        kind=_KIND_ENUMS[row["kind"]], value=row["value"], state=_STATES[row["state"]],
        threshold_millicredits=row["threshold_mc"], remaining_millicredits=row["remaining_mc"],
        created_at=_ts(row["created_at"]), changed_at=_ts(row["changed_at"]))


def alert_event_message(row: dict[str, Any]) -> admin_pb2.AlertEvent:
    return admin_pb2.AlertEvent(
        org_id=row["org_id"], event_id=row["event_id"], threshold_id=row["threshold_id"],
        user_id=row["user_id"] or "", kind=_KIND_ENUMS[row["kind"]], value=row["value"],
        threshold_millicredits=row["threshold_mc"], limit_millicredits=row["limit_mc"],
        remaining_millicredits=row["remaining_mc"], status=_STATUSES[row["status"]], attempts=row["attempts"],
        last_error=row["last_error"], created_at=_ts(row["created_at"]), delivered_at=_ts(row["delivered_at"]),
        next_attempt_at=_ts(row["next_attempt_at"]) if row["status"] == "pending" else None,
        deliveries=[admin_pb2.AlertDeliveryAttempt(
            attempt=d["attempt"], url=d["url"], status_code=d["status_code"] or 0, error=d["error"],
            duration_ms=d["duration_ms"], attempted_at=_ts(d["attempted_at"])) for d in row["deliveries"]])
