"""SIGKILL the authority under steady gRPC and REST load, restart it: nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import time

import openai
from invariants import assert_invariants

from credit.v1 import authority_pb2

from .conftest import InferenceProcess, make_key, outbox_count, report
from .load import LoadRecord, grpc_worker, verify_acknowledged

MESSAGES = [{"role": "user", "content": "Hello"}]


async def test_authority_sigkill_under_load_loses_nothing(own_authority, tokens, world, admin, spend, db,
                                                          models_file):
    inference = InferenceProcess(own_authority, tokens.spend, models_file,
                                 {"INFERENCE_RESERVE_TTL_SECONDS": "3"}).start()
    try:
        org, grpc_user = world.funded_member(allocation_mc=10_000_000)
        rest_org, rest_user = world.funded_member(allocation_mc=10_000_000)
        key, _ = make_key(admin, rest_user)
        client = openai.AsyncOpenAI(base_url=inference.base_url, api_key=key, max_retries=0, timeout=30)
        record = LoadRecord()
        rest_ok: list[str] = []
        rest_status: dict[int, int] = {}
        stop = asyncio.Event()

        async def rest_worker():
            while not stop.is_set():
                try:
                    raw = await client.chat.completions.with_raw_response.create(model="demo-chat",
                                                                                 messages=MESSAGES)
                    rest_ok.append(raw.headers["X-Request-Id"])
                    rest_status[200] = rest_status.get(200, 0) + 1
                except openai.APIStatusError as error:
                    rest_status[error.status_code] = rest_status.get(error.status_code, 0) + 1
                    await asyncio.sleep(0.05)
                except openai.APIConnectionError:
                    rest_status[0] = rest_status.get(0, 0) + 1

        workers = [asyncio.create_task(grpc_worker(own_authority.addr, tokens.spend, grpc_user, org, stop, record))
                   for _ in range(8)]
        workers += [asyncio.create_task(rest_worker()) for _ in range(4)]
        await asyncio.sleep(1.5)
        before_kill = len(record.acknowledged)
        in_flight = await db.fetchval("SELECT count(*) FROM reservations WHERE status = 'held' AND user_id = ANY($1)",
                                      [grpc_user, rest_user])
        own_authority.stop(kill=True)
        await asyncio.sleep(1.0)
        own_authority.start(port=own_authority.port)
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.gather(*workers)
        assert len(record.acknowledged) > before_kill > 0, "load must run before and after the kill"

        # Dead requests' holds expire (TTL 3 s) and the sweeper releases them.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            held = await db.fetchval("SELECT coalesce(sum(held_mc), 0) FROM allocations WHERE user_id = ANY($1)",
                                     [grpc_user, rest_user])
            queued = await asyncio.to_thread(outbox_count, inference)
            if held == 0 and not queued:
                break
            await asyncio.sleep(0.2)
        assert held == 0, "holds of dead requests were neither committed nor released"

        await verify_acknowledged(db, record)
        rest_rows = await db.fetch(
            "SELECT split_part(request_id, ':', 2) AS id, count(*) AS n FROM usage_attribution WHERE user_id = $1 "
            "GROUP BY 1", rest_user)
        counts = {r["id"]: r["n"] for r in rest_rows}
        assert all(counts.get(rid) == 1 for rid in rest_ok), "a REST call answered 200 was not charged exactly once"
        for user in (grpc_user, rest_user):
            used = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=user)).used_millicredits
            charged = await db.fetchval("SELECT coalesce(sum(credits_used), 0) FROM usage_attribution "
                                        "WHERE user_id = $1", user)
            assert used == charged
        statuses = dict(await db.fetch("SELECT status, count(*) FROM reservations WHERE user_id = ANY($1) "
                                       "GROUP BY 1", [grpc_user, rest_user]))
        await assert_invariants(db)
        report("authority SIGKILL under load", holds_in_flight_at_kill=in_flight,
               grpc_commits_acknowledged=len(record.acknowledged), grpc_gave_up=record.given_up,
               rest_200=len(rest_ok), rest_other_statuses={str(k): v for k, v in rest_status.items() if k != 200},
               reservations=statuses, lost=0, charged_twice=0)
    finally:
        inference.stop()

