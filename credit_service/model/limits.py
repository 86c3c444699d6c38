"""The domain's types of rate limits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

# ---- rate limits (credit_service/rate_limits.py) ---------------------------------


@dataclass(frozen=True)
class LimitScope:
    """Whose limits: 'org' (org_id), 'member' (org_id, user_id), 'key' (key_id, with its org and owner) or
    'individual' (user_id). key is the rate_limits row's scope_key (credit_limit_keys)."""

    scope: str
    org_id: str | None
    user_id: str | None
    key_id: str | None

    @property
    def key(self) -> str:
        if self.scope == "org":
            return f"org {self.org_id}"
        if self.scope == "member":
            return f"member {self.org_id} {self.user_id}"
        return f"key {self.key_id}" if self.scope == "key" else f"individual {self.user_id}"


LIMIT_NAMES = ("rpm", "tpm", "max_parallel", "credits_per_day_mc", "credits_per_month_mc")


@dataclass(frozen=True)
class RateLimitRow:
    """One scope's limits (None: no limit) and what is in use now."""

    scope: LimitScope
    rpm: int | None
    tpm: int | None
    max_parallel: int | None
    credits_per_day_mc: int | None
    credits_per_month_mc: int | None
    requests_remaining: int
    tokens_remaining: int
    open_holds: int
    credits_today_mc: int
    credits_this_month_mc: int
    updated_at: datetime
    updated_by: str
