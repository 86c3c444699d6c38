"""Restart PostgreSQL mid-load: calls fail closed, and service returns by itself
within 5 s of the database coming back, without restarting our processes."""

from __future__ import annotations

import asyncio
import time

import grpc
import openai
from conftest import AuthorityProcess, Stub
from invariants import assert_invariants

from credit.v1 import admin_pb2_grpc
from credit_service.migrate import migrate

from .conftest import InferenceProcess, admin_world, make_key, outbox_count, report
from .load import LoadRecord, grpc_worker, verify_acknowledged
from .pgcluster import new_server

MESSAGES = [{"role": "user", "content": "Hello"}]


async def test_postgres_restart_fails_closed_and_recovers_by_itself(tokens, models_file, upstream):
    import asyncpg

    pg = new_server()
    await migrate(pg.url)
    authority = AuthorityProcess(pg.url, tokens).start()
    inference = InferenceProcess(authority, tokens.spend, models_file, {"INFERENCE_RESERVE_TTL_SECONDS": "3"}).start()
    try:
        with grpc.insecure_channel(authority.addr) as channel:
            world = admin_world(channel, tokens)
            org, grpc_user = world.funded_member(allocation_mc=10_000_000)
            _, rest_user = world.funded_member(allocation_mc=10_000_000)
            key, _ = make_key(Stub(admin_pb2_grpc.CreditAdminStub(channel), tokens.admin), rest_user)
        client = openai.AsyncOpenAI(base_url=inference.base_url, api_key=key, max_retries=0, timeout=30)
        record = LoadRecord()
        rest: list[tuple[float, int]] = []
        answered: list[str] = []
        upstream_before = upstream.calls["up-chat"]
        stop = asyncio.Event()

        async def rest_worker():
            while not stop.is_set():
                try:
                    raw = await client.chat.completions.with_raw_response.create(model="up-chat", messages=MESSAGES)
                    # 200 "queued": reserved before the outage, commit parked in the outbox.
                    rest.append((time.monotonic(), 200 if "X-Billing-Status" not in raw.headers else 2000))
                    answered.append(raw.headers["X-Request-Id"])
                except openai.APIStatusError as error:
                    rest.append((time.monotonic(), error.status_code))
                    await asyncio.sleep(0.05)

        workers = [asyncio.create_task(grpc_worker(authority.addr, tokens.spend, grpc_user, org, stop, record,
                                                   patience=0.0)) for _ in range(4)]
        workers += [asyncio.create_task(rest_worker()) for _ in range(3)]
        await asyncio.sleep(1.0)
        await asyncio.to_thread(pg.stop, "fast")
        down_at = time.monotonic()
        await asyncio.sleep(2.0)
        await asyncio.to_thread(pg.start)
        back_at = time.monotonic()
        await asyncio.sleep(6.0)
        stop.set()
        await asyncio.gather(*workers)

        outage = [s for t, s in rest if down_at + 0.5 < t < back_at]
        # Requests reserved before the outage may still finish (their commit parked in the outbox);
        # nothing new gets a hold while the database is down.
        assert 503 in outage and set(outage) <= {503, 200, 2000}, f"REST during the outage: {set(outage)}"
        grpc_codes = set(record.errors)
        assert grpc_codes <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}, grpc_codes
        first_rest_ok = min(t for t, s in rest if s == 200 and t > back_at)
        queued = sum(1 for _, s in rest if s == 2000)
        first_grpc_ok = min(t for t in record.successes_after if t > back_at)
        assert first_rest_ok - back_at < 5 and first_grpc_ok - back_at < 5, "service did not return within 5 s"
        rest_ok = sum(1 for _, s in rest if s in (200, 2000))
        upstream_calls = upstream.calls["up-chat"] - upstream_before
        assert upstream_calls == rest_ok, "a model was called although no hold could be placed"

        db = await asyncpg.connect(pg.url)
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and (
                    await db.fetchval("SELECT coalesce(sum(held_mc), 0) FROM allocations")
                    or await asyncio.to_thread(outbox_count, inference)):
                await asyncio.sleep(0.2)
            await verify_acknowledged(db, record)
            rows = await db.fetch("SELECT split_part(request_id, ':', 2) AS id, count(*) AS n FROM usage_attribution "
                                  "WHERE user_id = $1 GROUP BY 1", rest_user)
            charged = {r["id"]: r["n"] for r in rows}
            assert sorted(charged) == sorted(answered) and set(charged.values()) <= {1}, \
                "an answered REST call was not charged exactly once"
            await assert_invariants(db)
        finally:
            await db.close()
        report("PostgreSQL restart mid-load (2 s down)", rest_503_during_outage=outage.count(503),
               rest_200_billing_queued=queued,
               rest_200=rest_ok, upstream_calls=upstream_calls, grpc_commits_acknowledged=len(record.acknowledged),
               grpc_errors=dict(record.errors),
               rest_back_after_s=round(first_rest_ok - back_at, 2), grpc_back_after_s=round(first_grpc_ok - back_at, 2),
               lost=0)
    finally:
        inference.stop()
        authority.stop(kill=True)
        pg.stop("immediate")
