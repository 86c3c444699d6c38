"""The credit authority's domain types: what storage returns and the rules read.

Plain frozen dataclasses, no SQL and no wire format. Storage builds them from
rows; the authority and the gRPC layer consume them. Amounts are integer
millicredits (`*_mc`).
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# The types of money coming in and accounted for, and of rate limits, live in their own modules (re-exported).
from .limits import LIMIT_NAMES, LimitScope, RateLimitRow
from .money_in import (
    PURCHASE_STATUSES,
    Account,
    Forecast,
    ForecastLine,
    PaidSession,
    PaymentOutcome,
    Purchase,
    Statement,
    StatementLine,
    StatementUsage,
    WindowUsage,
)
from .platforms import PLATFORM_CALLER_PREFIX, PlatformCredentialRow, PlatformGrant

# Roles whose service keys may act for the other members of their organization.
KEY_SERVICE_ROLES = ("owner", "admin")

# The largest total an account may reach (pool total, allocation or balance limit, used credits):
# 2^62 − 1 millicredits, so that limit − used − held stays inside BIGINT (migrations/0010).
MAX_ACCOUNT_TOTAL_MC = 2**62 - 1


def funding_label(funding_kind: str, org_id: str | None) -> str:
    return f"org:{org_id}" if funding_kind == "org" else "individual"


def hash_secret(secret: str) -> bytes:
    """The stored form of an API key's secret (SHA-256); the secret itself is never kept."""
    return hashlib.sha256(secret.encode()).digest()


# ---- accounts and the hot path ---------------------------------------------


@dataclass(frozen=True)
class Balance:
    funding_kind: str
    org_id: str | None
    limit_mc: int
    used_mc: int
    held_mc: int

    @property
    def available_mc(self) -> int:
        return self.limit_mc - self.used_mc - self.held_mc


@dataclass(frozen=True)
class Hold:
    reservation_id: uuid.UUID
    funding_kind: str
    org_id: str | None
    reserved_mc: int
    available_mc: int
    expires_at: datetime
    replayed: bool = False
    status: str = "held"
    # What is left of the per-minute limits that applied: {"requests": [limit, remaining, reset_ms],
    # "tokens": [...]} (credit_limit_try), or None when none did.
    limits: dict[str, list[int]] | None = None


@dataclass(frozen=True)
class Charge:
    charged_mc: int
    available_mc: int
    overrun: bool
    late: bool
    funding_kind: str
    org_id: str | None


# ---- organizations, members, users, keys -----------------------------------


@dataclass(frozen=True)
class OrgSummary:
    org_id: str
    name: str
    pool_total_mc: int
    allocated_mc: int
    used_mc: int
    held_mc: int
    created_at: datetime


@dataclass(frozen=True)
class MemberRow:
    org_id: str
    user_id: str
    role: str
    is_default: bool
    allocation_mc: int
    used_mc: int
    held_mc: int
    joined_at: datetime


@dataclass(frozen=True)
class ApiKeyRow:
    key_id: str
    user_id: str
    org_id: str | None
    kind: str
    name: str
    created_at: datetime
    revoked_at: datetime | None
    expires_at: datetime | None = None  # None: the key does not expire
    last_used_at: datetime | None = None  # when VerifyApiKey last accepted it, to the minute


@dataclass(frozen=True)
class UserRow:
    user_id: str
    display_name: str
    email: str
    created_at: datetime


# ---- usage -------------------------------------------------------------------


@dataclass(frozen=True)
class UsageRecord:
    """One attribution row: a committed charge."""
    attribution_id: int
    reservation_id: uuid.UUID
    org_id: str | None
    user_id: str
    funding_kind: str
    service_type: str
    service_name: str
    credits_used: int
    request_id: str
    request_metadata: dict[str, Any]
    overrun: bool
    late: bool
    created_at: datetime
    caller: str = ""  # who made the reservation: a static token's name or "platform:<name>"


@dataclass(frozen=True)
class UsageGroup:
    key: str
    requests: int
    credits_used: int


@dataclass(frozen=True)
class UsagePage:
    """A usage query's answer: the newest records or the groups (one of them), and the totals of
    everything the filter matched."""
    records: list[UsageRecord]
    groups: list[UsageGroup]
    total_mc: int
    total_requests: int


# ---- low-balance alerts ---------------------------------------------------------


@dataclass(frozen=True)
class AlertWebhook:
    org_id: str
    url: str
    secret: str
    updated_at: datetime


@dataclass(frozen=True)
class AlertThreshold:
    """A threshold on the org's pool (user_id None) or a member's allocation, with where it stands:
    base (pool total or allocation limit), remaining, and the threshold in millicredits."""
    org_id: str
    threshold_id: int
    user_id: str | None
    kind: str  # 'absolute' (value in millicredits) or 'percent' (0…100 of base)
    value: int
    state: str  # 'armed' or 'fired'
    created_at: datetime
    changed_at: datetime
    base_mc: int
    remaining_mc: int
    threshold_mc: int


@dataclass(frozen=True)
class AlertDelivery:
    """One attempt to deliver an alert to the org's webhook."""
    org_id: str
    event_id: int
    attempt: int
    url: str
    status_code: int | None
    error: str
    duration_ms: int
    attempted_at: datetime


@dataclass(frozen=True)
class AlertEvent:
    """One crossing of a threshold, and the state of its delivery."""
    org_id: str
    event_id: int
    threshold_id: int
    user_id: str | None
    kind: str
    value: int
    threshold_mc: int
    limit_mc: int
    remaining_mc: int
    status: str  # 'pending', 'delivered', 'failed', 'no_webhook'
    attempts: int
    next_attempt_at: datetime
    lease_until: datetime | None
    last_status_code: int | None
    last_error: str
    created_at: datetime
    delivered_at: datetime | None
    burn_rate_mc_per_day: int | None = None  # the forecast it carries, fixed at its first delivery attempt
    runs_out_at: datetime | None = None
    deliveries: list[AlertDelivery] = field(default_factory=list)


@dataclass(frozen=True)
class DueAlert:
    """An alert leased to this worker for one delivery attempt (attempt = its number)."""
    event: AlertEvent
    webhook_url: str
    webhook_secret: str

    @property
    def attempt(self) -> int:
        return self.event.attempts


# ---- the audit log -----------------------------------------------------------

@dataclass(frozen=True)
class AuditRecord:
    """One administrative action (migration 0018; credit_service/audit.py says what each field holds)."""
    audit_id: int
    at: datetime
    actor: str
    actor_kind: str
    on_behalf_of: str
    action: str
    target_kind: str
    org_id: str | None
    target_id: str
    before: Any
    after: Any
    request_id: str
    source: str
    forwarded_for: str
