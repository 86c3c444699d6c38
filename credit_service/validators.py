"""The checks every request's values pass before anything is written: ids, labels, amounts, reservation
ids, metadata, webhook URLs, decimal texts, and the fingerprint a Reserve's retry must match. Each raises
InvalidArgument naming the field."""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from .errors import InvalidArgument
from .ids import ID
from .money import MAX_MILLICREDITS, is_committable, is_reservable

MAX_METADATA_BYTES = 16 * 1024
MAX_LABEL = 256
MAX_QUERY_LIMIT = 10_000
ROLES = ("owner", "admin", "member")
GROUPINGS = (None, "user", "model", "service_type", "day")


def require_id(field: str, value: str) -> str:
    if not value:
        raise InvalidArgument(field, "is required")
    if not ID.fullmatch(value):
        raise InvalidArgument(field, "must be 1-128 characters of A-Z a-z 0-9 . _ : @ - "
                                     "starting with a letter or digit")
    return value


def optional_id(field: str, value: str) -> str:
    return require_id(field, value) if value else ""


def require_label(field: str, value: str, limit: int = MAX_LABEL) -> str:
    if len(value) > limit:
        raise InvalidArgument(field, f"must be at most {limit} characters")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise InvalidArgument(field, "must not contain control characters")
    return value


def require_creator(created_by: str) -> str:
    """Who creates credits (the operator's token name): every credit-creating row names it."""
    return require_label("created_by", created_by, 128) if created_by else require_id("created_by", "")


def require_amount(field: str, value: int, *, allow_zero: bool = False) -> int:
    ok = is_committable(value) if allow_zero else is_reservable(value)
    if not ok:
        low = 0 if allow_zero else 1
        raise InvalidArgument(field, f"must be an integer from {low} to {MAX_MILLICREDITS} millicredits")
    return value


MAX_TOKENS = 10**9  # a request's token count, estimated or real


def require_tokens(field: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS:
        raise InvalidArgument(field, f"must be an integer from 0 to {MAX_TOKENS:,} tokens")
    return value


def require_reservation_id(value: str) -> uuid.UUID:
    if not value:
        raise InvalidArgument("reservation_id", "is required")
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise InvalidArgument("reservation_id", "must be a reservation id returned by Reserve") from None
    if str(parsed) != value.lower():
        raise InvalidArgument("reservation_id", "must be a reservation id returned by Reserve")
    return parsed


def _check_json_value(value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidArgument("metadata", "numbers must be finite")
    if isinstance(value, str) and "\x00" in value:
        raise InvalidArgument("metadata", "strings must not contain NUL characters")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_json_value(key)
            _check_json_value(item)
    if isinstance(value, list):
        for item in value:
            _check_json_value(item)


def require_metadata(value: dict[str, Any]) -> dict[str, Any]:
    _check_json_value(value)
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_METADATA_BYTES:
        raise InvalidArgument("metadata", f"must be at most {MAX_METADATA_BYTES} bytes as JSON, got {size}")
    return value


def request_fingerprint(*parts: Any) -> bytes:
    """Hash of a request's arguments: a retry must match it exactly."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).digest()


ALERT_KINDS = ("absolute", "percent")
MIN_WEBHOOK_SECRET = 16
MAX_WEBHOOK_SECRET = 256
MAX_WEBHOOK_URL = 2048
MAX_ALERT_EVENTS = 1000


def require_webhook_url(url: str) -> str:
    """An absolute http(s) URL with a host, no credentials, no whitespace or control characters."""
    if len(url) > MAX_WEBHOOK_URL:
        raise InvalidArgument("url", f"must be at most {MAX_WEBHOOK_URL} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise InvalidArgument("url", "must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port  # .port raises on a bad port
    except ValueError:
        raise InvalidArgument("url", "must be a valid http(s) URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidArgument("url", "must be an absolute http:// or https:// URL")
    if parts.username or parts.password:
        raise InvalidArgument("url", "must not carry credentials (the secret signs each request)")
    return url


def decimal_text(field: str, text: str) -> str | None:
    if not text:
        return None
    if not re.fullmatch(r"\d{1,15}(\.\d{1,4})?", text):
        raise InvalidArgument(field, "must be a non-negative decimal with at most 4 places, e.g. 99.00")
    return text


MAX_KEY_LIFETIME_SECONDS = 2 * 365 * 86400  # an API key expires at most two years after it is made


def require_key_expiry(ttl_seconds: int, expires_at: datetime | None, now: datetime) -> None:
    """CreateApiKey's optional expiry: ttl_seconds (1 … two years) or expires_at (in the future, at most two
    years ahead), not both; neither is a key that does not expire."""
    if ttl_seconds and expires_at is not None:
        raise InvalidArgument("expires_at", "give ttl_seconds or expires_at, not both")
    if not 0 <= ttl_seconds <= MAX_KEY_LIFETIME_SECONDS:
        raise InvalidArgument("ttl_seconds", f"must be from 1 to {MAX_KEY_LIFETIME_SECONDS:,} seconds (two years), "
                                             "or 0 for no expiry")
    if expires_at is not None and not now < expires_at <= now + timedelta(seconds=MAX_KEY_LIFETIME_SECONDS):
        raise InvalidArgument("expires_at", "must be in the future and at most two years ahead")
