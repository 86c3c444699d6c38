"""Platform credentials: creating, listing, rotating and revoking them, and the lookup of a secret's digest
that the authenticator's cache runs (credit_service/auth.py). Only SHA-256 digests of secrets are stored."""

from __future__ import annotations

import asyncpg

from ..errors import AlreadyExists, FailedPrecondition, NotFound
from ..model import PlatformCredentialRow, PlatformGrant
from .common import Queries

CREDENTIAL_SELECT = """
    SELECT c.name, c.individuals, c.roles, c.created_by, c.created_at, c.rotated_at, c.revoked_at,
           ARRAY(SELECT o.org_id FROM platform_credential_orgs o WHERE o.name = c.name ORDER BY o.org_id) AS org_ids,
           (SELECT max(s.valid_until) FROM platform_secrets s
             WHERE s.name = c.name AND s.valid_until > now()) AS previous_valid_until
      FROM platform_credentials c"""

# A secret is valid while its credential is not revoked and, once a rotation replaced it, until its grace ends.
GRANT_SQL = """
    SELECT c.name, c.individuals, c.roles,
           ARRAY(SELECT o.org_id FROM platform_credential_orgs o WHERE o.name = c.name) AS org_ids,
           (extract(epoch FROM s.valid_until - now()) * 1000)::BIGINT AS ms_left
      FROM platform_secrets s JOIN platform_credentials c ON c.name = s.name
     WHERE s.secret_hash = $1 AND c.revoked_at IS NULL AND (s.valid_until IS NULL OR s.valid_until > now())"""


def credential_row(row: asyncpg.Record) -> PlatformCredentialRow:
    return PlatformCredentialRow(row["name"], tuple(row["org_ids"]), row["individuals"], tuple(row["roles"]),
                                 row["created_by"], row["created_at"], row["rotated_at"],
                                 row["previous_valid_until"], row["revoked_at"])


class PlatformQueries(Queries):
    async def _credential(self, conn: asyncpg.Connection, name: str) -> PlatformCredentialRow:
        row = await conn.fetchrow(CREDENTIAL_SELECT + " WHERE c.name = $1", name)
        if row is None:
            raise NotFound(f"platform credential {name!r} not found")
        return credential_row(row)

    async def create_platform_credential(self, name: str, org_ids: list[str], individuals: bool, roles: list[str],
                                         created_by: str, secret_hash: bytes) -> PlatformCredentialRow:
        async with self.writing() as conn:
            known = await conn.fetch("SELECT org_id FROM organizations WHERE org_id = ANY($1::text[])", org_ids)
            missing = sorted(set(org_ids) - {r["org_id"] for r in known})
            if missing:
                raise NotFound(f"organization {missing[0]!r} not found")
            inserted = await conn.fetchval(
                """INSERT INTO platform_credentials (name, individuals, roles, created_by) VALUES ($1, $2, $3, $4)
                   ON CONFLICT (name) DO NOTHING RETURNING 1""", name, individuals, roles, created_by)
            if inserted is None:
                raise AlreadyExists(f"platform credential {name!r} already exists (names are never reused)")
            await conn.execute("INSERT INTO platform_credential_orgs (name, org_id) SELECT $1, unnest($2::text[])",
                               name, org_ids)
            await conn.execute("INSERT INTO platform_secrets (secret_hash, name) VALUES ($1, $2)", secret_hash, name)
            return await self._credential(conn, name)

    async def list_platform_credentials(self) -> list[PlatformCredentialRow]:
        return [credential_row(r) for r in await self.pool.fetch(CREDENTIAL_SELECT + " ORDER BY c.name")]

    async def rotate_platform_credential(self, name: str, secret_hash: bytes,
                                         grace_seconds: int) -> PlatformCredentialRow:
        """A new current secret; the current one stays valid `grace_seconds` more (an older one still in its
        grace keeps the shorter of its own end and that); secrets whose grace has ended are deleted."""
        async with self.writing() as conn:
            state = await conn.fetchrow("SELECT revoked_at FROM platform_credentials WHERE name = $1 FOR UPDATE",
                                        name)
            if state is None:
                raise NotFound(f"platform credential {name!r} not found")
            if state["revoked_at"] is not None:
                raise FailedPrecondition(f"platform credential {name!r} is revoked")
            await conn.execute("DELETE FROM platform_secrets WHERE name = $1 AND valid_until <= now()", name)
            await conn.execute(
                """UPDATE platform_secrets
                      SET valid_until = least(coalesce(valid_until, 'infinity'), now() + make_interval(secs => $2))
                    WHERE name = $1""", name, grace_seconds)
            await conn.execute("INSERT INTO platform_secrets (secret_hash, name) VALUES ($1, $2)", secret_hash, name)
            await conn.execute("UPDATE platform_credentials SET rotated_at = now() WHERE name = $1", name)
            return await self._credential(conn, name)

    async def revoke_platform_credential(self, name: str) -> PlatformCredentialRow:
        """Revoked now (a repeated revocation keeps the first time)."""
        async with self.writing() as conn:
            await conn.execute("UPDATE platform_credentials SET revoked_at = coalesce(revoked_at, now()) "
                               "WHERE name = $1", name)
            return await self._credential(conn, name)

    async def find_platform_grant(self, secret_hash: bytes) -> PlatformGrant | None:
        row = await self.pool.fetchrow(GRANT_SQL, secret_hash)
        if row is None:
            return None
        return PlatformGrant(row["name"], tuple(row["org_ids"]), row["individuals"], tuple(row["roles"]),
                             row["ms_left"])
