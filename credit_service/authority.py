"""The credit authority's domain: validates every request, applies the rules of
the contract (docs/contract.md) and delegates the atomic work to storage.

No wire format and no SQL here: the gRPC layer hands in plain values, the
storage layer runs the statements. Funding resolution and the conditional
hold live in PostgreSQL so they are atomic (see migrations/functions/).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from . import audit
from .auth import Scope
from .errors import InvalidArgument, NotFound
from .ids import API_KEY_ID, REQUEST_ID
from .model import (
    AlertEvent,
    AlertThreshold,
    AlertWebhook,
    ApiKeyRow,
    AuditRecord,
    Balance,
    Charge,
    Hold,
    MemberRow,
    OrgSummary,
    UsagePage,
    UserRow,
    hash_secret,
)
from .money import MAX_MILLICREDITS, is_committable
from .storage import Storage
from .validators import (
    ALERT_KINDS,
    GROUPINGS,
    MAX_ALERT_EVENTS,
    MAX_QUERY_LIMIT,
    MAX_WEBHOOK_SECRET,
    MIN_WEBHOOK_SECRET,
    ROLES,
    decimal_text,
    optional_id,
    request_fingerprint,
    require_amount,
    require_creator,
    require_id,
    require_key_expiry,
    require_label,
    require_metadata,
    require_reservation_id,
    require_tokens,
    require_webhook_url,
)
from .webhook_policy import require_webhook_target


@dataclass(frozen=True)
class AuditQuery:
    """ListAuditRecords' filters ('' / None / 0: any)."""
    org_id: str = ""
    actor: str = ""
    action: str = ""
    start: datetime | None = None
    end: datetime | None = None
    before_id: int = 0
    limit: int = 0


MAX_AUDIT_PAGE = 1000


@dataclass(frozen=True)
class UsageQuery:
    org_id: str = ""
    user_id: str = ""
    service_type: str = ""
    model: str = ""
    start: datetime | None = None
    end: datetime | None = None
    group_by: str | None = None
    limit: int = 0


class CreditAuthority:
    """Check, Reserve, Commit, Release, balances and administration."""

    def __init__(self, storage: Storage, *, default_ttl_seconds: int = 600, max_ttl_seconds: int = 3600,
                 webhook_http_hosts: frozenset[str] = frozenset()):
        self._storage = storage
        self._webhook_http_hosts = webhook_http_hosts  # CREDIT_WEBHOOK_HTTP_HOSTS (credit_service/webhook_policy.py)
        self._default_ttl = default_ttl_seconds
        self._max_ttl = max_ttl_seconds

    # ---- hot path -------------------------------------------------------

    async def check(self, user_id: str, org_id: str, amount_mc: int,
                    scope: Scope | None = None) -> tuple[bool, Balance]:
        require_id("user_id", user_id)
        optional_id("org_id", org_id)
        require_amount("amount_millicredits", amount_mc)
        balance = await self._balance_in(scope, user_id, org_id)
        return balance.available_mc >= amount_mc, balance

    async def balance(self, user_id: str, org_id: str, scope: Scope | None = None) -> Balance:
        require_id("user_id", user_id)
        optional_id("org_id", org_id)
        return await self._balance_in(scope, user_id, org_id)

    async def _balance_in(self, scope: Scope | None, user_id: str, org_id: str) -> Balance:
        """The balance of the resolved funding; for a platform credential (scope set), OUT_OF_SCOPE unless
        the funding is one it may act for: a named org is checked before anything is read."""
        if scope is not None and org_id:
            scope.require("org", org_id, user_id)
        balance = await self._storage.balance(user_id, org_id)
        if scope is not None:
            scope.require(balance.funding_kind, balance.org_id, user_id)
        return balance

    async def _funding_in(self, scope: Scope, user_id: str, org_id: str) -> str:
        """The org a platform credential's Reserve is funded from ('' for an individual balance), resolved
        before the hold and in its scope (else OUT_OF_SCOPE, nothing held)."""
        if org_id:
            scope.require("org", org_id, user_id)
            return org_id
        return (await self._balance_in(scope, user_id, "")).org_id or ""

    def _ttl(self, ttl_seconds: int) -> int:
        if ttl_seconds < 0:
            raise InvalidArgument("ttl_seconds", "must not be negative (0 means the default)")
        return min(ttl_seconds or self._default_ttl, self._max_ttl)

    async def reserve(self, *, caller: str, request_id: str, user_id: str, org_id: str, amount_mc: int,
                      ttl_seconds: int, service_type: str, service_name: str,
                      metadata: dict[str, Any], api_key_id: str = "", estimated_tokens: int = 0,
                      scope: Scope | None = None) -> Hold:
        if not request_id:
            raise InvalidArgument("request_id", "is required (a caller-chosen idempotency key)")
        if not REQUEST_ID.fullmatch(request_id):
            raise InvalidArgument("request_id", "must be 1-128 printable ASCII characters without spaces")
        require_id("user_id", user_id)
        optional_id("org_id", org_id)
        require_amount("amount_millicredits", amount_mc)
        ttl = self._ttl(ttl_seconds)
        require_label("service_type", service_type, 128)
        require_label("service_name", service_name, 128)
        require_metadata(metadata)
        if api_key_id and not API_KEY_ID.fullmatch(api_key_id):
            raise InvalidArgument("api_key_id", "must be an API key id (ck_ and 16 hex digits) or empty")
        require_tokens("estimated_tokens", estimated_tokens)
        # The limits' inputs join the fingerprint only when given: a Reserve without them hashes as before.
        limits = (api_key_id, estimated_tokens) if api_key_id or estimated_tokens else ()
        fingerprint = request_fingerprint(user_id, org_id, amount_mc, ttl_seconds, service_type,
                                          service_name, metadata, *limits)
        funding_org = org_id
        if scope is not None:  # a platform credential: resolve first, hold only what is in its scope
            funding_org = await self._funding_in(scope, user_id, org_id)
        hold = await self._storage.reserve(
            caller=caller, request_id=request_id, request_hash=fingerprint, user_id=user_id, org_id=funding_org,
            amount_mc=amount_mc, ttl_seconds=ttl, service_type=service_type, service_name=service_name,
            metadata=metadata, api_key_id=api_key_id, tokens=estimated_tokens)
        if scope is not None and not hold.replayed and not scope.allows(hold.funding_kind, hold.org_id):
            # Resolved to an individual balance, but the user joined an org in between: give the hold back.
            await self._storage.release(caller=caller, reservation_id=hold.reservation_id, reason="out of scope")
            scope.require(hold.funding_kind, hold.org_id, user_id)
        return hold

    async def commit(self, *, caller: str, reservation_id: str, amount_mc: int, metadata: dict[str, Any],
                     tokens: int | None = None) -> Charge:
        rid = require_reservation_id(reservation_id)
        require_amount("amount_millicredits", amount_mc, allow_zero=True)
        require_metadata(metadata)
        if tokens is not None:
            require_tokens("tokens", tokens)
        return await self._storage.commit(caller=caller, reservation_id=rid, amount_mc=amount_mc, metadata=metadata,
                                          tokens=tokens)

    async def release(self, *, caller: str, reservation_id: str, reason: str) -> None:
        rid = require_reservation_id(reservation_id)
        require_label("reason", reason)
        await self._storage.release(caller=caller, reservation_id=rid, reason=reason)

    async def expire_holds(self, batch: int) -> int:
        return await self._storage.expire_holds(batch)

    # ---- administration -------------------------------------------------

    async def create_user(self, user_id: str, display_name: str, email: str) -> UserRow:
        require_id("user_id", user_id)
        require_label("display_name", display_name)
        require_label("email", email)
        return await self._storage.create_user(user_id, display_name, email)

    async def create_organization(self, org_id: str, name: str) -> OrgSummary:
        require_id("org_id", org_id)
        require_label("name", name)
        return await self._storage.create_organization(org_id, name)

    async def add_member(self, org_id: str, user_id: str, role: str, is_default: bool) -> MemberRow:
        require_id("org_id", org_id)
        require_id("user_id", user_id)
        if role not in ROLES:
            raise InvalidArgument("role", f"must be one of {', '.join(ROLES)}")
        return await self._storage.add_member(org_id, user_id, role, is_default)

    async def remove_member(self, org_id: str, user_id: str) -> int:
        require_id("org_id", org_id)
        require_id("user_id", user_id)
        return await self._storage.remove_member(org_id, user_id)

    async def top_up_pool(self, org_id: str, amount_mc: int, purchase_reference: str,
                          purchase_amount: str, purchase_currency: str, created_by: str) -> OrgSummary:
        """An operator's top-up (the mint role): `created_by` names the operator on the row and its ledger entry."""
        require_id("org_id", org_id)
        require_amount("amount_millicredits", amount_mc)
        if not purchase_reference:
            raise InvalidArgument("purchase_reference", "is required (it makes the top-up idempotent)")
        require_label("purchase_reference", purchase_reference, 128)
        require_label("purchase_currency", purchase_currency, 8)
        amount = decimal_text("purchase_amount", purchase_amount)
        return await self._storage.top_up_pool(org_id, amount_mc, purchase_reference, amount, purchase_currency,
                                               require_creator(created_by))

    async def set_allocation(self, org_id: str, user_id: str, allocation_mc: int, allocated_by: str) -> MemberRow:
        require_id("org_id", org_id)
        require_id("user_id", user_id)
        require_amount("allocation_millicredits", allocation_mc, allow_zero=True)
        require_label("allocated_by", allocated_by, 128)
        return await self._storage.set_allocation(org_id, user_id, allocation_mc, allocated_by)

    async def grant_individual(self, user_id: str, amount_mc: int, reason: str, reference: str,
                               created_by: str) -> Balance:
        require_id("user_id", user_id)
        require_amount("amount_millicredits", amount_mc)
        require_label("reason", reason)
        if not reference:
            raise InvalidArgument("reference", "is required (an operator's grant is idempotent by its reference: "
                                               "a retry with the same reference adds nothing)")
        require_label("reference", reference, 128)
        return await self._storage.grant_individual(user_id, amount_mc, reason, reference,
                                                    require_creator(created_by))

    async def get_organization(self, org_id: str) -> OrgSummary:
        require_id("org_id", org_id)
        return await self._storage.get_organization(org_id)

    async def list_members(self, org_id: str) -> list[MemberRow]:
        require_id("org_id", org_id)
        return await self._storage.list_members(org_id)

    async def query_usage(self, query: UsageQuery, scope: Scope | None = None) -> UsagePage:
        """Usage analytics; a platform credential (`scope`) sees an org of its scope, or with no org named only
        charges to individual balances (and only if it may act on them)."""
        if scope is not None:
            scope.require("org" if query.org_id else "individual", query.org_id or None, query.user_id)
        optional_id("org_id", query.org_id)
        optional_id("user_id", query.user_id)
        require_label("service_type", query.service_type, 128)
        require_label("model", query.model, 128)
        if query.group_by not in GROUPINGS:
            raise InvalidArgument("group_by", "unknown grouping")
        if not 0 <= query.limit <= MAX_QUERY_LIMIT:
            raise InvalidArgument("limit", f"must be 0 (default 1,000) to {MAX_QUERY_LIMIT}")
        if query.start and query.end and query.start >= query.end:
            raise InvalidArgument("end_time", "must be after start_time")
        return await self._storage.query_usage(
            org_id=query.org_id or None, user_id=query.user_id or None,
            service_type=query.service_type or None, model=query.model or None,
            start=query.start, end=query.end, group_by=query.group_by, limit=query.limit or 1000,
            individual_only=scope is not None and not query.org_id)

    async def create_api_key(self, user_id: str, org_id: str, kind: str, name: str, ttl_seconds: int = 0,
                             expires_at: datetime | None = None) -> tuple[ApiKeyRow, str]:
        """A new key and its secret. Expiry: ttl_seconds from the database's now, or expires_at; neither: never."""
        require_id("user_id", user_id)
        optional_id("org_id", org_id)
        require_label("name", name)
        if kind == "service" and not org_id:
            raise InvalidArgument("org_id", "is required for a service key")
        require_key_expiry(ttl_seconds, expires_at, datetime.now(timezone.utc))
        return await self._storage.create_api_key(user_id, org_id or None, kind, name, ttl_seconds or None,
                                                  expires_at)

    async def revoke_api_key(self, key_id: str) -> ApiKeyRow:
        if not API_KEY_ID.fullmatch(key_id or ""):
            raise InvalidArgument("key_id", "must be a key id like ck_0123456789abcdef")
        return await self._storage.revoke_api_key(key_id)

    async def verify_api_key(self, secret: str) -> ApiKeyRow | None:
        """The key's row when the secret matches an active key, else None (constant-time compare).
        Active: not revoked, not expired, and a key bound to an org still has its owner as a member there (a
        service key: as an owner or admin), checked now, not only when the key was created."""
        if not secret:
            raise InvalidArgument("secret", "is required")
        if len(secret) > 256:
            return None
        key_id, dot, _ = secret.partition(".")
        if not dot or not API_KEY_ID.fullmatch(key_id):
            return None
        presented = hash_secret(secret)
        found = await self._storage.find_api_key(key_id, presented)
        if found is None:
            return None
        row, stored_hash, usable = found
        if not hmac.compare_digest(stored_hash, presented) or not usable:
            return None
        return row

    async def list_api_keys(self, user_id: str, org_id: str) -> list[ApiKeyRow]:
        optional_id("user_id", user_id)
        optional_id("org_id", org_id)
        if not user_id and not org_id:
            raise InvalidArgument("user_id", "user_id or org_id is required")
        return await self._storage.list_api_keys(user_id or None, org_id or None)

    async def require_user(self, user_id: str) -> None:
        if not await self._storage.user_exists(user_id):
            raise NotFound(f"user {user_id!r} not found")

    # ---- low-balance alerts (credit_service/jobs/alert_delivery.py delivers them) ----

    async def set_alert_webhook(self, org_id: str, url: str, secret: str) -> AlertWebhook | None:
        require_id("org_id", org_id)
        if url:
            require_webhook_url(url)
            if not MIN_WEBHOOK_SECRET <= len(secret) <= MAX_WEBHOOK_SECRET:
                raise InvalidArgument("secret", f"must be {MIN_WEBHOOK_SECRET} to {MAX_WEBHOOK_SECRET} characters")
            require_label("secret", secret, MAX_WEBHOOK_SECRET)
            await require_webhook_target(url, self._webhook_http_hosts)
        elif secret:
            raise InvalidArgument("secret", "must be empty when the url is (removing the webhook)")
        return await self._storage.set_alert_webhook(org_id, url, secret)

    async def get_alert_webhook(self, org_id: str) -> AlertWebhook | None:
        require_id("org_id", org_id)
        return await self._storage.get_alert_webhook(org_id)

    async def create_alert_threshold(self, org_id: str, user_id: str, kind: str, value: int) -> AlertThreshold:
        require_id("org_id", org_id)
        optional_id("user_id", user_id)
        if kind not in ALERT_KINDS:
            raise InvalidArgument("kind", "must be absolute (millicredits) or percent")
        if kind == "percent" and not 0 <= value <= 100:
            raise InvalidArgument("value", "a percent threshold must be 0 to 100")
        if kind == "absolute" and not is_committable(value):
            raise InvalidArgument("value", f"must be an integer from 0 to {MAX_MILLICREDITS} millicredits")
        return await self._storage.create_alert_threshold(org_id, user_id or None, kind, value)

    async def delete_alert_threshold(self, org_id: str, threshold_id: int) -> None:
        require_id("org_id", org_id)
        if threshold_id <= 0:
            raise InvalidArgument("threshold_id", "is required (a positive id returned by CreateAlertThreshold)")
        await self._storage.delete_alert_threshold(org_id, threshold_id)

    async def list_alert_thresholds(self, org_id: str, user_id: str) -> list[AlertThreshold]:
        require_id("org_id", org_id)
        optional_id("user_id", user_id)
        return await self._storage.list_alert_thresholds(org_id, user_id or None)

    async def list_alert_events(self, org_id: str, user_id: str, limit: int) -> list[AlertEvent]:
        require_id("org_id", org_id)
        optional_id("user_id", user_id)
        if not 0 <= limit <= MAX_ALERT_EVENTS:
            raise InvalidArgument("limit", f"must be 0 (default 100) to {MAX_ALERT_EVENTS}")
        return await self._storage.list_alert_events(org_id, user_id or None, limit or 100)

    # ---- the audit log (credit_service/audit.py) ----

    async def record_audit_alone(self, entry: audit.Entry) -> None:
        """The record of an audited call that wrote nothing (its change had been made before: a replay)."""
        await self._storage.record_audit_alone(entry)

    async def list_audit(self, query: AuditQuery) -> list[AuditRecord]:
        optional_id("org_id", query.org_id)
        require_label("actor", query.actor, 200)
        require_label("action", query.action, 64)
        if query.before_id < 0:
            raise InvalidArgument("before_id", "must be 0 (from the newest) or an audit_id")
        if not 0 <= query.limit <= MAX_AUDIT_PAGE:
            raise InvalidArgument("limit", f"must be 0 (default 100) to {MAX_AUDIT_PAGE}")
        if query.start and query.end and query.start >= query.end:
            raise InvalidArgument("end_time", "must be after start_time")
        return await self._storage.list_audit(query.org_id, query.actor, query.action, query.start, query.end,
                                              query.before_id, query.limit or 100)
