"""The `naive` contender: the seed's billing pattern, served by the same stack
as the authority (a grpc.aio server over an asyncpg pool, one process or
several sharing a port).

The seed (Ops-Center's org_credit_integration) checks, calls, then deducts:

1. check — `has_sufficient_org_credits`: find the user's org (default first),
   read `allocated - used` of the allocation, refuse if it does not fit;
2. the LLM call (here a no-op);
3. debit — `deduct_org_credits`: in its own transaction, an unconditional
   `UPDATE … SET used_credits = used_credits + amount` and an attribution row.

No hold, no condition on the UPDATE: concurrent callers all pass the check
before any of them debits, which is the overspend this bench counts. The
tables live in their own schema (`bench_naive`), named after the seed's.

Run as `python -m bench.naive_server` with NAIVE_DATABASE_URL,
NAIVE_LISTEN_ADDR, NAIVE_TOKEN, NAIVE_DB_POOL_MAX and NAIVE_REUSE_PORT.
RPC: `/bench.NaiveBilling/Spend` (metadata `x-call-ms`: how long the
"call" takes, default 0), request `credit.v1.ReserveRequest` (user_id,
amount_millicredits, service_type, service_name, metadata), response
`credit.v1.CommitResponse`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

import asyncpg
import grpc
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2_grpc

from credit.v1 import authority_pb2, types_pb2

SERVICE = "bench.NaiveBilling"
SPEND = f"/{SERVICE}/Spend"

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS bench_naive;
CREATE TABLE IF NOT EXISTS bench_naive.organization_members (
    org_id      TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    is_default  BOOLEAN NOT NULL DEFAULT false,
    joined_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, user_id)
);
CREATE INDEX IF NOT EXISTS organization_members_by_user
    ON bench_naive.organization_members (user_id, is_default DESC, joined_at);
CREATE TABLE IF NOT EXISTS bench_naive.user_credit_allocations (
    org_id             TEXT NOT NULL,
    user_id            TEXT NOT NULL,
    allocated_credits  BIGINT NOT NULL,          -- millicredits, as in the seed
    used_credits       BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (org_id, user_id)
);
CREATE TABLE IF NOT EXISTS bench_naive.credit_usage_attribution (
    id                BIGSERIAL PRIMARY KEY,
    org_id            TEXT NOT NULL,
    user_id           TEXT NOT NULL,
    service_type      TEXT NOT NULL,
    service_name      TEXT NOT NULL,
    credits_used      BIGINT NOT NULL,
    request_metadata  JSONB NOT NULL DEFAULT '{}',
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
"""

# has_sufficient_org_credits: the user's org (default first), then its allocation.
CHECK_SQL = """
SELECT a.org_id, a.allocated_credits - a.used_credits AS remaining
  FROM bench_naive.organization_members m
  JOIN bench_naive.user_credit_allocations a ON a.org_id = m.org_id AND a.user_id = m.user_id
 WHERE m.user_id = $1
 ORDER BY m.is_default DESC, m.joined_at
 LIMIT 1"""

# deduct_org_credits: unconditional.
DEBIT_SQL = """
UPDATE bench_naive.user_credit_allocations SET used_credits = used_credits + $3
 WHERE org_id = $1 AND user_id = $2
RETURNING allocated_credits - used_credits"""

ATTRIBUTION_SQL = """
INSERT INTO bench_naive.credit_usage_attribution
    (org_id, user_id, service_type, service_name, credits_used, request_metadata)
VALUES ($1, $2, $3, $4, $5, $6::jsonb)"""


async def seed_account(conn: asyncpg.Connection, org_id: str, user_id: str, allocated_mc: int) -> None:
    await conn.execute(SCHEMA_SQL)
    await conn.execute(
        "INSERT INTO bench_naive.organization_members (org_id, user_id, is_default) VALUES ($1, $2, true)"
        " ON CONFLICT DO NOTHING", org_id, user_id)
    await conn.execute(
        "INSERT INTO bench_naive.user_credit_allocations (org_id, user_id, allocated_credits) VALUES ($1, $2, $3)"
        " ON CONFLICT (org_id, user_id) DO UPDATE SET allocated_credits = $3, used_credits = 0",
        org_id, user_id, allocated_mc)


class NaiveBilling:
    def __init__(self, pool: asyncpg.Pool, token: str):
        self._pool = pool
        self._authorization = f"Bearer {token}"

    async def spend(self, request: authority_pb2.ReserveRequest,
                    context: grpc.aio.ServicerContext) -> authority_pb2.CommitResponse:
        metadata = dict(context.invocation_metadata() or ())
        if metadata.get("authorization") != self._authorization:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
        amount = request.amount_millicredits
        # 1. check
        row = await self._pool.fetchrow(CHECK_SQL, request.user_id)
        if row is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no organization allocation")
        if row["remaining"] < amount:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "Insufficient organization credits")
        # 2. the LLM call: a no-op, or as long as the caller's x-call-ms asks (exhaustion scenario)
        await asyncio.sleep(int(metadata.get("x-call-ms", "0")) / 1000)
        # 3. debit, in its own transaction, with the attribution row
        usage = json.dumps(json_format.MessageToDict(request.metadata))
        async with self._pool.acquire() as conn, conn.transaction():
            remaining = await conn.fetchval(DEBIT_SQL, row["org_id"], request.user_id, amount)
            await conn.execute(ATTRIBUTION_SQL, row["org_id"], request.user_id, request.service_type,
                               request.service_name, amount, usage)
        return authority_pb2.CommitResponse(
            charged_millicredits=amount, available_millicredits=remaining,
            funding=types_pb2.Funding(kind=types_pb2.Funding.ORG, org_id=row["org_id"]))


async def serve() -> None:
    env = os.environ
    pool_max = int(env.get("NAIVE_DB_POOL_MAX", "10"))
    pool = await asyncpg.create_pool(env["NAIVE_DATABASE_URL"], min_size=pool_max, max_size=pool_max,
                                     command_timeout=30)
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 1024 * 1024),
                                      ("grpc.so_reuseport", 1 if env.get("NAIVE_REUSE_PORT") == "1" else 0)])
    billing = NaiveBilling(pool, env["NAIVE_TOKEN"])
    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "Spend": grpc.unary_unary_rpc_method_handler(
            billing.spend, request_deserializer=authority_pb2.ReserveRequest.FromString,
            response_serializer=authority_pb2.CommitResponse.SerializeToString)})
    server.add_generic_rpc_handlers((handler,))
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    addr = env["NAIVE_LISTEN_ADDR"]
    if server.add_insecure_port(addr) == 0:
        raise RuntimeError(f"could not bind {addr}")
    await server.start()
    print(f"naive billing listening on {addr}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=5)
    await pool.close()


if __name__ == "__main__":
    asyncio.run(serve())
