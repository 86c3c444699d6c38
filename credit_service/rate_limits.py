"""Rate limits: the rules of setting them (README, "Rate limits"); storage/rate_limits.py keeps them and
migrations/functions/credit_limit*.sql enforces them inside Reserve.

A scope is named by its ids: org_id alone (the organization: every member's requests together), org_id
and user_id (a member in it), key_id (an API key, with org_id optionally as a check) or user_id alone (an
individual user's own balance). Each limit is optional; set ones must lie within LIMIT_BOUNDS; credit
ceilings are for members.
"""

from __future__ import annotations

from .errors import InvalidArgument
from .ids import API_KEY_ID
from .model import LIMIT_NAMES, RateLimitRow
from .storage import Storage
from .validators import optional_id, require_label

# The wire name of each limit and its bounds.
LIMIT_BOUNDS = {
    "rpm": ("requests_per_minute", 1, 1_000_000),
    "tpm": ("tokens_per_minute", 1, 1_000_000_000),
    "max_parallel": ("max_parallel", 1, 100_000),
    "credits_per_day_mc": ("credits_per_day_millicredits", 1, 10**15),
    "credits_per_month_mc": ("credits_per_month_millicredits", 1, 10**15),
}
assert tuple(LIMIT_BOUNDS) == LIMIT_NAMES


def require_limits(limits: dict[str, int | None], clear: bool) -> dict[str, int | None]:
    """Each given limit within its bounds; clear with none given; something to do."""
    given = {name: value for name, value in limits.items() if value is not None}
    for name, value in given.items():
        field, low, high = LIMIT_BOUNDS[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidArgument(field, f"must be an integer from {low:,} to {high:,} (unset: leave as it is)")
    if clear and given:
        raise InvalidArgument("clear", "clears every limit of the scope: set no limit with it")
    if not clear and not given:
        raise InvalidArgument("requests_per_minute", "set at least one limit, or clear")
    return {name: limits.get(name) for name in LIMIT_NAMES}


def require_scope_ids(org_id: str, user_id: str, key_id: str) -> None:
    optional_id("org_id", org_id)
    optional_id("user_id", user_id)
    if key_id and not API_KEY_ID.fullmatch(key_id):
        raise InvalidArgument("key_id", "must be an API key id (ck_ and 16 hex digits)")
    if not (org_id or user_id or key_id):
        raise InvalidArgument("org_id", "name an organization, a member (org_id and user_id), a key or a user")


class RateLimits:
    def __init__(self, storage: Storage):
        self._storage = storage

    async def set(self, org_id: str, user_id: str, key_id: str, limits: dict[str, int | None], clear: bool,
                  updated_by: str) -> RateLimitRow:
        require_scope_ids(org_id, user_id, key_id)
        checked = require_limits(limits, clear)
        return await self._storage.set_rate_limit(org_id, user_id, key_id, checked, clear,
                                                  require_label("updated_by", updated_by, 128))

    async def list(self, org_id: str, user_id: str) -> list[RateLimitRow]:
        optional_id("org_id", org_id)
        optional_id("user_id", user_id)
        if not (org_id or user_id):
            raise InvalidArgument("org_id", "name an organization or a user")
        return await self._storage.list_rate_limits(org_id, user_id)
