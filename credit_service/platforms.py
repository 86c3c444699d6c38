"""Platform credentials: the rules of creating, rotating and revoking them (README, "Integrating a
platform"); storage/platforms.py keeps them, credit_service/auth.py authenticates their secrets.

A credential names the organizations it may act for, whether it may act on individual balances, and its
roles (spend and/or read). Only the operator's role (mint) manages them: a credential may spend for whole
organizations. The secret ("cp_" and 43 URL-safe characters, 256 random bits) is returned once and stored
as a SHA-256 digest. A rotation returns a new secret; the one before stays valid for a grace period
(CREDIT_PLATFORM_GRACE_SECONDS, default 1 hour, or the request's grace_seconds), then is refused.
"""

from __future__ import annotations

import re
import secrets

from .auth import PLATFORM_SECRET_PREFIX, token_digest
from .errors import InvalidArgument
from .model import PlatformCredentialRow
from .storage import Storage
from .validators import require_creator, require_id

NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
PLATFORM_ROLES = ("spend", "read")
MAX_ORGS = 100
MAX_GRACE_SECONDS = 7 * 24 * 3600


def new_secret() -> str:
    return PLATFORM_SECRET_PREFIX + secrets.token_urlsafe(32)


def require_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise InvalidArgument("name", "must be 1-64 characters of a-z 0-9 . _ - starting with a letter or digit")
    return name


def require_roles(roles: list[str]) -> list[str]:
    if not roles:
        raise InvalidArgument("roles", "is required: spend and/or read")
    unknown = [r for r in roles if r not in PLATFORM_ROLES]
    if unknown:
        raise InvalidArgument("roles", f"{unknown[0]!r} is not a platform role: spend and/or read")
    return sorted(set(roles))


def require_orgs(org_ids: list[str], individuals: bool) -> list[str]:
    if len(org_ids) > MAX_ORGS:
        raise InvalidArgument("org_ids", f"at most {MAX_ORGS} organizations")
    for org_id in org_ids:
        require_id("org_ids", org_id)
    if not org_ids and not individuals:
        raise InvalidArgument("org_ids", "name at least one organization (or allow individuals): "
                                         "a credential for no one is of no use")
    return sorted(set(org_ids))


class PlatformCredentials:
    def __init__(self, storage: Storage, default_grace_seconds: int = 3600):
        self._storage = storage
        self._default_grace = default_grace_seconds

    async def create(self, name: str, org_ids: list[str], individuals: bool, roles: list[str],
                     created_by: str) -> tuple[PlatformCredentialRow, str]:
        require_name(name)
        orgs = require_orgs(org_ids, individuals)
        role_list = require_roles(roles)
        secret = new_secret()
        row = await self._storage.create_platform_credential(name, orgs, individuals, role_list,
                                                             require_creator(created_by), token_digest(secret))
        return row, secret

    async def list(self) -> list[PlatformCredentialRow]:
        return await self._storage.list_platform_credentials()

    async def rotate(self, name: str, grace_seconds: int) -> tuple[PlatformCredentialRow, str]:
        require_name(name)
        if not 0 <= grace_seconds <= MAX_GRACE_SECONDS:
            raise InvalidArgument("grace_seconds", f"must be 1 to {MAX_GRACE_SECONDS} seconds (0: the default, "
                                                   f"{self._default_grace})")
        secret = new_secret()
        row = await self._storage.rotate_platform_credential(name, token_digest(secret),
                                                             grace_seconds or self._default_grace)
        return row, secret

    async def revoke(self, name: str) -> PlatformCredentialRow:
        require_name(name)
        return await self._storage.revoke_platform_credential(name)
