"""Platform credentials (credit_service/platforms.py): what storage returns about them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

# A platform credential's caller name: what its reservations are scoped to and what its reservation and
# attribution rows record. A static token's name cannot contain ':', so no static token can take it.
PLATFORM_CALLER_PREFIX = "platform:"


@dataclass(frozen=True)
class PlatformCredentialRow:
    """One credential, never its secret."""
    name: str
    org_ids: tuple[str, ...]
    individuals: bool
    roles: tuple[str, ...]
    created_by: str
    created_at: datetime
    rotated_at: datetime | None
    previous_valid_until: datetime | None  # the grace of the secret before the last rotation, if still running
    revoked_at: datetime | None

    @property
    def caller(self) -> str:
        return PLATFORM_CALLER_PREFIX + self.name


@dataclass(frozen=True)
class PlatformGrant:
    """What a valid secret authenticates as (a revoked credential or an expired secret has none)."""
    name: str
    org_ids: tuple[str, ...]
    individuals: bool
    roles: tuple[str, ...]
    ms_left: int | None  # a rotated-out secret's remaining grace; None for the current secret
