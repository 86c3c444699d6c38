"""Accounts the contenders spend from, created through CreditAdmin RPCs (the
way an operator creates them), plus the naive contender's own tables."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import asyncpg
import grpc

from credit.v1 import admin_pb2, admin_pb2_grpc

from . import naive_server

HOT_ORG, HOT_USER = "hot-org", "hot-user"
# The hot account again, with rate limits at the org and the member set high enough never to trip
# (authority_hot_limited): what enforcing limits costs the hot path.
HOT_LIMITED_ORG, HOT_LIMITED_USER = "hot-limited-org", "hot-limited-user"
NEVER_TRIPPING = {"requests_per_minute": 1_000_000, "tokens_per_minute": 1_000_000_000, "max_parallel": 100_000}
EXHAUST_CALL_MS = (0, 50)  # simulated LLM call between check/Reserve and debit/Commit


def exhaust_account(call_ms: int, naive: bool = False) -> tuple[str, str]:
    prefix = "naive-exhaust" if naive else "exhaust"
    return f"{prefix}-org-{call_ms}ms", f"{prefix}-user-{call_ms}ms"


INFERENCE_ORG, INFERENCE_USER = "inference-org", "inference-user"
NAIVE_ORG, NAIVE_USER = "naive-org", "naive-user"
BIG = 10**13  # millicredits: far more than any timed run spends


@dataclass
class Seeded:
    spread_users: list[str] = field(default_factory=list)
    inference_api_key: str = ""
    seconds: float = 0.0
    rpcs: int = 0


async def seed_authority(addr: str, admin_token: str, *, spread_users: int, spread_orgs: int,
                         exhaust_limit_mc: int, concurrency: int = 32) -> Seeded:
    """Hot, exhaustion, inference and spread accounts, all through CreditAdmin."""
    started = time.monotonic()
    seeded = Seeded()
    md = (("authorization", f"Bearer {admin_token}"),)
    gate = asyncio.Semaphore(concurrency)
    async with grpc.aio.insecure_channel(addr) as channel:
        admin = admin_pb2_grpc.CreditAdminStub(channel)

        async def call(method, request):
            async with gate:
                seeded.rpcs += 1
                return await method(request, metadata=md, timeout=60)

        async def org(org_id: str, pool_mc: int) -> None:
            await call(admin.CreateOrganization, admin_pb2.CreateOrganizationRequest(org_id=org_id, name=org_id))
            await call(admin.TopUpPool, admin_pb2.TopUpPoolRequest(
                org_id=org_id, amount_millicredits=pool_mc, purchase_reference=f"bench-{org_id}"))

        async def member(org_id: str, user_id: str, allocation_mc: int) -> None:
            await call(admin.CreateUser, admin_pb2.CreateUserRequest(user_id=user_id, display_name=user_id))
            await call(admin.AddMember, admin_pb2.AddMemberRequest(
                org_id=org_id, user_id=user_id, role=admin_pb2.MEMBER_ROLE_MEMBER, is_default=True))
            await call(admin.SetAllocation, admin_pb2.SetAllocationRequest(
                org_id=org_id, user_id=user_id, allocation_millicredits=allocation_mc))

        spread_org_ids = [f"spread-org-{j}" for j in range(spread_orgs)]
        exhaust = [exhaust_account(ms) for ms in EXHAUST_CALL_MS]
        await asyncio.gather(org(HOT_ORG, BIG), org(HOT_LIMITED_ORG, BIG), org(INFERENCE_ORG, BIG),
                             *(org(o, exhaust_limit_mc) for o, _ in exhaust),
                             *(org(o, BIG) for o in spread_org_ids))
        seeded.spread_users = [f"spread-user-{i}" for i in range(spread_users)]
        per_user = BIG // max(1, spread_users // spread_orgs + 1)
        await asyncio.gather(
            member(HOT_ORG, HOT_USER, BIG), member(HOT_LIMITED_ORG, HOT_LIMITED_USER, BIG),
            *(member(o, u, exhaust_limit_mc) for o, u in exhaust),
            member(INFERENCE_ORG, INFERENCE_USER, BIG),
            *(member(spread_org_ids[i % spread_orgs], u, per_user) for i, u in enumerate(seeded.spread_users)))
        for scope in ({"org_id": HOT_LIMITED_ORG}, {"org_id": HOT_LIMITED_ORG, "user_id": HOT_LIMITED_USER}):
            await call(admin.SetRateLimit, admin_pb2.SetRateLimitRequest(**scope, **NEVER_TRIPPING))
        key = await call(admin.CreateApiKey, admin_pb2.CreateApiKeyRequest(
            user_id=INFERENCE_USER, org_id=INFERENCE_ORG, name="bench", kind=admin_pb2.API_KEY_KIND_USER))
        seeded.inference_api_key = key.secret
    seeded.seconds = time.monotonic() - started
    return seeded


async def seed_naive(database_url: str, exhaust_limit_mc: int) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await naive_server.seed_account(conn, NAIVE_ORG, NAIVE_USER, BIG)
        for ms in EXHAUST_CALL_MS:
            await naive_server.seed_account(conn, *exhaust_account(ms, naive=True), exhaust_limit_mc)
    finally:
        await conn.close()


async def analyze(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def settle(database_url: str) -> None:
    """Every contender starts from the same state: dead row versions left by the
    previous one vacuumed away, dirty pages flushed (no checkpoint inside the window)."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("VACUUM (ANALYZE)")
        await conn.execute("CHECKPOINT")
    except asyncpg.PostgresError:
        pass  # not superuser on a shared server: skip the checkpoint
    finally:
        await conn.close()


@dataclass
class AccountState:
    limit_mc: int
    used_mc: int
    held_mc: int

    @property
    def overspend_mc(self) -> int:
        """Millicredits charged or held beyond the limit."""
        return max(0, self.used_mc + self.held_mc - self.limit_mc)


async def authority_account(database_url: str, org_id: str, user_id: str) -> AccountState:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow("SELECT limit_mc, used_mc, held_mc FROM allocations"
                                  " WHERE org_id = $1 AND user_id = $2", org_id, user_id)
    finally:
        await conn.close()
    return AccountState(row["limit_mc"], row["used_mc"], row["held_mc"])


async def naive_account(database_url: str, org_id: str, user_id: str) -> AccountState:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow("SELECT allocated_credits, used_credits FROM bench_naive.user_credit_allocations"
                                  " WHERE org_id = $1 AND user_id = $2", org_id, user_id)
    finally:
        await conn.close()
    return AccountState(row["allocated_credits"], row["used_credits"], 0)
