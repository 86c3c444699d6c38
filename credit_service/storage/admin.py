"""Administration: users, organizations, members, pool top-ups, allocations, individual grants,
API keys, and the reads the admin API serves.

Short explicit transactions; an allocation change locks the pool row before the allocation row,
the order every writer of both uses.
"""

from __future__ import annotations

import secrets
from datetime import datetime

import asyncpg

from ..errors import ALLOCATION_BELOW_COMMITTED, AlreadyExists, FailedPrecondition, InsufficientCredits, NotFound
from ..model import (
    KEY_SERVICE_ROLES,
    MAX_ACCOUNT_TOTAL_MC,
    ApiKeyRow,
    Balance,
    MemberRow,
    OrgSummary,
    UserRow,
    hash_secret,
)
from .audit import aim_entry
from .common import Queries, past_largest_total

MEMBER_SELECT = """SELECT m.org_id, m.user_id, m.role, m.is_default, m.joined_at,
                          coalesce(a.limit_mc, 0) AS limit_mc, coalesce(a.used_mc, 0) AS used_mc,
                          coalesce(a.held_mc, 0) AS held_mc
                     FROM org_members m
                     LEFT JOIN allocations a ON a.org_id = m.org_id AND a.user_id = m.user_id"""


def member_row(row: asyncpg.Record) -> MemberRow:
    return MemberRow(row["org_id"], row["user_id"], row["role"], row["is_default"],
                     row["limit_mc"], row["used_mc"], row["held_mc"], row["joined_at"])


def api_key_row(row: asyncpg.Record) -> ApiKeyRow:
    return ApiKeyRow(row["key_id"], row["user_id"], row["org_id"], row["kind"], row["name"],
                     row["created_at"], row["revoked_at"], row["expires_at"], row["last_used_at"])


class AdminQueries(Queries):
    # ---- users, organizations, members ------------------------------------

    async def create_user(self, user_id: str, display_name: str, email: str) -> UserRow:
        async with self.writing() as conn:
            row = await conn.fetchrow(
                """INSERT INTO users (user_id, display_name, email) VALUES ($1, $2, $3)
                   ON CONFLICT (user_id) DO NOTHING RETURNING *""", user_id, display_name, email)
            if row is None:  # inside the transaction: its audit record rolls back with it
                raise AlreadyExists(f"user {user_id!r} already exists")
        return UserRow(row["user_id"], row["display_name"], row["email"], row["created_at"])

    async def create_organization(self, org_id: str, name: str) -> OrgSummary:
        async with self.writing() as conn:
            row = await conn.fetchrow(
                """INSERT INTO organizations (org_id, name) VALUES ($1, $2)
                   ON CONFLICT (org_id) DO NOTHING RETURNING created_at""", org_id, name)
            if row is None:
                raise AlreadyExists(f"organization {org_id!r} already exists")
            await conn.execute("INSERT INTO org_pools (org_id) VALUES ($1)", org_id)
        return OrgSummary(org_id, name, 0, 0, 0, 0, row["created_at"])

    async def add_member(self, org_id: str, user_id: str, role: str, is_default: bool) -> MemberRow:
        async with self.writing() as conn:
            await self.require_org(conn, org_id)
            await self.require_user(conn, user_id)
            # Lock the user's memberships so two concurrent default changes serialize.
            await conn.execute("SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE", user_id)
            if is_default:
                await conn.execute("UPDATE org_members SET is_default = false WHERE user_id = $1 AND is_default",
                                   user_id)
            row = await conn.fetchrow(
                """INSERT INTO org_members (org_id, user_id, role, is_default) VALUES ($1, $2, $3, $4)
                   ON CONFLICT (org_id, user_id) DO NOTHING RETURNING joined_at""",
                org_id, user_id, role, is_default)
            if row is None:
                raise AlreadyExists(f"user {user_id!r} is already a member of {org_id!r}")
        return MemberRow(org_id, user_id, role, is_default, 0, 0, 0, row["joined_at"])

    async def remove_member(self, org_id: str, user_id: str) -> int:
        """Removes the membership; the unused allocation returns to the pool. Returns that amount."""
        async with self.writing() as conn:
            await self.require_org(conn, org_id, lock=True)
            member = await conn.fetchrow(
                "SELECT 1 FROM org_members WHERE org_id = $1 AND user_id = $2 FOR UPDATE", org_id, user_id)
            if member is None:
                raise NotFound(f"user {user_id!r} is not a member of {org_id!r}")
            alloc = await conn.fetchrow(
                "SELECT * FROM allocations WHERE org_id = $1 AND user_id = $2 FOR UPDATE", org_id, user_id)
            returned = 0
            if alloc is not None:
                if alloc["held_mc"] > 0:
                    raise FailedPrecondition(
                        f"member {user_id!r} has {alloc['held_mc']} millicredits on hold; "
                        "release or commit them before removing the member")
                returned = max(alloc["limit_mc"] - alloc["used_mc"], 0)
                if returned:
                    await self._change_allocation(conn, org_id, user_id, -returned, "member removed")
            await conn.execute("DELETE FROM org_members WHERE org_id = $1 AND user_id = $2", org_id, user_id)
            # Keys bound to this org bill its credits: they leave with the member (a later
            # AddMember does not bring them back).
            await conn.execute(
                """UPDATE api_keys SET revoked_at = now()
                    WHERE org_id = $1 AND user_id = $2 AND revoked_at IS NULL""", org_id, user_id)
        return returned

    # ---- pools, allocations, grants ------------------------------------

    async def top_up_pool(self, org_id: str, amount_mc: int, purchase_reference: str,
                          purchase_amount: str | None, purchase_currency: str, created_by: str) -> OrgSummary:
        """An operator's top-up (source 'operator', created_by the operator), once per purchase reference: a
        retry with the same amount replays, another amount is AlreadyExists."""
        async with self.writing() as conn:
            await self.require_org(conn, org_id, lock=True)
            await self.add_to_pool(conn, org_id, amount_mc, purchase_reference, purchase_amount, purchase_currency,
                                   "operator", created_by, f"operator {created_by}, reference {purchase_reference}")
        return await self.get_organization(org_id)

    @staticmethod
    async def add_to_pool(conn: asyncpg.Connection, org_id: str, amount_mc: int, purchase_reference: str,
                          purchase_amount: str | None, purchase_currency: str, source: str, created_by: str,
                          note: str) -> bool:
        """Adds credits to a pool (its row already locked) once per purchase reference; True when added now.
        Simultaneous top-ups of one org queue on the pool row; the insert is race-safe by itself too (ON
        CONFLICT DO NOTHING, then the stored amount decides). A top-up also shrinks an overdraft a refund left
        (org_pools.overdrawn_mc, migrations/0011)."""
        inserted = await conn.fetchval(
            """INSERT INTO pool_top_ups (org_id, amount_mc, purchase_reference, purchase_amount,
                                         purchase_currency, source, created_by)
               VALUES ($1, $2, $3, $4::numeric, $5, $6, $7)
               ON CONFLICT (org_id, purchase_reference) DO NOTHING RETURNING top_up_id""",
            org_id, amount_mc, purchase_reference, purchase_amount, purchase_currency, source, created_by)
        if inserted is None:
            previous = await conn.fetchval(
                "SELECT amount_mc FROM pool_top_ups WHERE org_id = $1 AND purchase_reference = $2",
                org_id, purchase_reference)
            if previous != amount_mc:
                raise AlreadyExists(f"purchase_reference {purchase_reference!r} was already used with another amount")
            return False
        updated = await conn.execute(
            """UPDATE org_pools SET total_mc = total_mc + $2,
                                    overdrawn_mc = least(overdrawn_mc, greatest(allocated_mc - total_mc - $2, 0))
               WHERE org_id = $1 AND total_mc <= $3::bigint - $2::bigint""",
            org_id, amount_mc, MAX_ACCOUNT_TOTAL_MC)
        if updated == "UPDATE 0":
            raise past_largest_total(f"the pool of {org_id!r}")
        await conn.execute(
            """INSERT INTO ledger_entries (account, org_id, kind, delta_limit_mc, note)
               VALUES ('pool', $1, 'top_up', $2, $3)""", org_id, amount_mc, note)
        return True

    async def _change_allocation(self, conn: asyncpg.Connection, org_id: str, user_id: str,
                                 delta_mc: int, note: str) -> None:
        """Moves an allocation's limit by delta (pool row already locked)."""
        updated = await conn.execute(
            """UPDATE allocations SET limit_mc = limit_mc + $3, updated_at = now()
               WHERE org_id = $1 AND user_id = $2""", org_id, user_id, delta_mc)
        if updated == "UPDATE 0":
            await conn.execute("INSERT INTO allocations (org_id, user_id, limit_mc) VALUES ($1, $2, $3)",
                               org_id, user_id, delta_mc)
        # A lower allocation also shrinks an overdraft a refund left (never grows it: migrations/0011).
        await conn.execute(
            """UPDATE org_pools SET allocated_mc = allocated_mc + $2,
                                    overdrawn_mc = least(overdrawn_mc, greatest(allocated_mc + $2 - total_mc, 0))
               WHERE org_id = $1""", org_id, delta_mc)
        await conn.execute(
            """INSERT INTO ledger_entries (account, org_id, user_id, kind, delta_limit_mc, note)
               VALUES ('allocation', $1, $2, 'allocation', $3, $4)""", org_id, user_id, delta_mc, note)

    async def set_allocation(self, org_id: str, user_id: str, allocation_mc: int, allocated_by: str) -> MemberRow:
        async with self.writing() as conn:
            pool = await self.require_org(conn, org_id, lock=True)
            await self.require_member(conn, org_id, user_id)
            alloc = await conn.fetchrow(
                "SELECT * FROM allocations WHERE org_id = $1 AND user_id = $2 FOR UPDATE", org_id, user_id)
            current = alloc["limit_mc"] if alloc else 0
            committed = (alloc["used_mc"] + alloc["held_mc"]) if alloc else 0
            if allocation_mc < committed:
                raise FailedPrecondition(
                    f"allocation {allocation_mc} is below what {user_id!r} already used or holds ({committed})",
                    ALLOCATION_BELOW_COMMITTED,
                    {"allocation": str(allocation_mc), "committed": str(committed), "user_id": user_id})
            unallocated = pool["total_mc"] - pool["allocated_mc"]
            delta = allocation_mc - current
            if delta > 0 and delta > unallocated:  # lowering one is always allowed, even in an overdrawn pool
                raise InsufficientCredits(max(unallocated, 0), delta, f"pool:{org_id}")
            if delta:
                await self._change_allocation(conn, org_id, user_id, delta, f"set by {allocated_by}".strip())
        return await self.get_member(org_id, user_id)

    async def grant_individual(self, user_id: str, amount_mc: int, reason: str, reference: str,
                               created_by: str) -> Balance:
        """An operator's grant (created_by the operator), once per (user, reference): a retry with the same
        amount replays (returns the balance), another amount is AlreadyExists. Of simultaneous grants with one
        reference, one inserts; the others wait on the unique index for it to commit, then find its row."""
        async with self.writing() as conn:
            await self.require_user(conn, user_id)
            inserted = await conn.fetchval(
                """INSERT INTO individual_grants (user_id, amount_mc, reason, reference, created_by)
                   VALUES ($1, $2, $3, $4, $5)
                   ON CONFLICT (user_id, reference) DO NOTHING RETURNING grant_id""",
                user_id, amount_mc, reason, reference, created_by)
            if inserted is None:
                previous = await conn.fetchval(
                    "SELECT amount_mc FROM individual_grants WHERE user_id = $1 AND reference = $2",
                    user_id, reference)
                if previous != amount_mc:
                    raise AlreadyExists(f"grant reference {reference!r} was already used with another amount")
                return await self._individual(conn, user_id)
            granted = await conn.fetchval(
                """INSERT INTO individual_balances (user_id, limit_mc) VALUES ($1, $2)
                   ON CONFLICT (user_id) DO UPDATE
                   SET limit_mc = individual_balances.limit_mc + $2, updated_at = now()
                   WHERE individual_balances.limit_mc <= $3::bigint - $2::bigint RETURNING user_id""",
                user_id, amount_mc, MAX_ACCOUNT_TOTAL_MC)
            if granted is None:
                raise past_largest_total(f"the individual balance of {user_id!r}")
            await conn.execute(
                """INSERT INTO ledger_entries (account, user_id, kind, delta_limit_mc, note)
                   VALUES ('individual', $1, 'grant', $2, $3)""",
                user_id, amount_mc, f"operator {created_by}, reference {reference}: {reason}")
            return await self._individual(conn, user_id)

    async def _individual(self, conn: asyncpg.Connection, user_id: str) -> Balance:
        row = await conn.fetchrow("SELECT * FROM individual_balances WHERE user_id = $1", user_id)
        return Balance("individual", None, row["limit_mc"], row["used_mc"], row["held_mc"])

    # ---- reads ------------------------------------------------------------

    async def get_organization(self, org_id: str) -> OrgSummary:
        row = await self.pool.fetchrow(
            """SELECT o.org_id, o.name, o.created_at, p.total_mc, p.allocated_mc,
                      coalesce(sum(a.used_mc), 0)::BIGINT AS used_mc,
                      coalesce(sum(a.held_mc), 0)::BIGINT AS held_mc
                 FROM organizations o JOIN org_pools p USING (org_id)
                 LEFT JOIN allocations a USING (org_id)
                WHERE o.org_id = $1
                GROUP BY o.org_id, o.name, o.created_at, p.total_mc, p.allocated_mc""", org_id)
        if row is None:
            raise NotFound(f"organization {org_id!r} not found")
        return OrgSummary(row["org_id"], row["name"], row["total_mc"], row["allocated_mc"],
                          row["used_mc"], row["held_mc"], row["created_at"])

    async def get_member(self, org_id: str, user_id: str) -> MemberRow:
        row = await self.pool.fetchrow(MEMBER_SELECT + " WHERE m.org_id = $1 AND m.user_id = $2",
                                        org_id, user_id)
        if row is None:
            raise NotFound(f"user {user_id!r} is not a member of {org_id!r}")
        return member_row(row)

    async def list_members(self, org_id: str) -> list[MemberRow]:
        async with self.pool.acquire() as conn:
            await self.require_org(conn, org_id)
            rows = await conn.fetch(MEMBER_SELECT + " WHERE m.org_id = $1 ORDER BY m.join_seq", org_id)
        return [member_row(r) for r in rows]

    async def user_exists(self, user_id: str) -> bool:
        return await self.pool.fetchval("SELECT 1 FROM users WHERE user_id = $1", user_id) is not None

    # ---- API keys ---------------------------------------------------------

    async def create_api_key(self, user_id: str, org_id: str | None, kind: str, name: str, ttl_seconds: int | None,
                             expires_at: datetime | None) -> tuple[ApiKeyRow, str]:
        key_id = "ck_" + secrets.token_hex(8)
        secret = f"{key_id}.{secrets.token_urlsafe(32)}"
        async with self.writing() as conn:
            await self.require_user(conn, user_id)
            if org_id is not None:
                await self.require_org(conn, org_id)
                # Locked: a concurrent RemoveMember waits for this key, then revokes it with the others.
                role = await conn.fetchval(
                    "SELECT role FROM org_members WHERE org_id = $1 AND user_id = $2 FOR SHARE", org_id, user_id)
                if role is None:
                    raise FailedPrecondition(f"user {user_id!r} is not a member of {org_id!r}")
                if kind == "service" and role not in KEY_SERVICE_ROLES:
                    raise FailedPrecondition(
                        f"a service key acts for every member of {org_id!r}: its owner {user_id!r} "
                        "must be an owner or admin there")
            await aim_entry(conn, "api_key", org_id, key_id)
            row = await conn.fetchrow(
                """INSERT INTO api_keys (key_id, secret_hash, user_id, org_id, kind, name, expires_at)
                   VALUES ($1, $2, $3, $4, $5, $6, coalesce($7::timestamptz, now() + $8::bigint * interval '1 second'))
                   RETURNING *""",
                key_id, hash_secret(secret), user_id, org_id, kind, name, expires_at, ttl_seconds)
        return api_key_row(row), secret

    async def revoke_api_key(self, key_id: str) -> ApiKeyRow:
        async with self.writing() as conn:
            await aim_entry(conn, "api_key", await conn.fetchval("SELECT org_id FROM api_keys WHERE key_id = $1",
                                                                 key_id), key_id)
            row = await conn.fetchrow(
                """UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
                   WHERE key_id = $1 RETURNING *""", key_id)
            if row is None:  # inside the transaction: its audit record rolls back with it
                raise NotFound(f"API key {key_id!r} not found")
        return api_key_row(row)

    async def find_api_key(self, key_id: str, presented_hash: bytes) -> tuple[ApiKeyRow, bytes, bool] | None:
        """(key, secret hash, usable now), in one round trip: VerifyApiKey is on the REST path. Usable: not
        revoked, not expired, and, for a key bound to an org, its owner is still a member there (for a service
        key, an owner or admin), checked at every use. A usable key whose stored hash is the presented one gets
        last_used_at = now(), written only when the stored value is older than a minute ("to the minute"):
        one row write per key a minute, not per request. The caller still compares the hashes itself."""
        row = await self.pool.fetchrow(
            """WITH found AS (
                   SELECT k.*, k.revoked_at IS NULL
                               AND (k.expires_at IS NULL OR k.expires_at > now())
                               AND (k.org_id IS NULL
                                    OR (m.role IS NOT NULL AND (k.kind = 'user' OR m.role = ANY($2::text[]))))
                               AS usable
                     FROM api_keys k
                     LEFT JOIN org_members m ON m.org_id = k.org_id AND m.user_id = k.user_id
                    WHERE k.key_id = $1),
               used AS (
                   UPDATE api_keys k SET last_used_at = now()
                     FROM found f
                    WHERE k.key_id = f.key_id AND f.usable AND k.secret_hash = $3
                      AND (k.last_used_at IS NULL OR k.last_used_at < now() - interval '60 seconds')
                   RETURNING k.last_used_at)
               SELECT f.key_id, f.user_id, f.org_id, f.kind, f.name, f.created_at, f.revoked_at, f.expires_at,
                      coalesce((SELECT last_used_at FROM used), f.last_used_at) AS last_used_at,
                      f.secret_hash, f.usable
                 FROM found f""", key_id, list(KEY_SERVICE_ROLES), presented_hash)
        if row is None:
            return None
        return api_key_row(row), bytes(row["secret_hash"]), row["usable"]

    async def list_api_keys(self, user_id: str | None, org_id: str | None) -> list[ApiKeyRow]:
        rows = await self.pool.fetch(
            """SELECT * FROM api_keys WHERE ($1::text IS NULL OR user_id = $1)
                 AND ($2::text IS NULL OR org_id = $2) ORDER BY created_at DESC, key_id""", user_id, org_id)
        return [api_key_row(r) for r in rows]
