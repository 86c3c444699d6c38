"""Restart PostgreSQL mid-load: calls fail closed, service returns by itself once the database is
back, without restarting our processes, and every call the clients made is accounted for."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import asyncpg
import grpc
import openai
import pytest
from conftest import AuthorityProcess, Stub
from invariants import assert_invariants

from credit.v1 import admin_pb2_grpc
from credit_service.migrate import migrate

from .conftest import InferenceProcess, RestRecord, admin_world, make_key, outbox_count, reconcile_rest, report
from .load import LoadRecord, failure_text, grpc_worker, reconcile
from .pgcluster import new_server

MESSAGES = [{"role": "user", "content": "Hello"}]
HELD = "SELECT coalesce(sum(held_mc), 0)::bigint FROM allocations"


async def test_postgres_restart_fails_closed_and_recovers_by_itself(tokens, models_file, upstream):
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
        rest = RestRecord()
        upstream_before = upstream.calls["up-chat"]
        stop = asyncio.Event()

        async def rest_worker():
            while not stop.is_set():
                if await rest.chat(client, "up-chat", MESSAGES) != 200:
                    await asyncio.sleep(0.05)

        # patience 0: a gRPC client gives up at the first error (its outcome unknown, reconciled below).
        workers = [asyncio.create_task(grpc_worker(authority.addr, tokens.spend, grpc_user, org, stop, record,
                                                   patience=0.0)) for _ in range(4)]
        workers += [asyncio.create_task(rest_worker()) for _ in range(3)]
        await asyncio.sleep(1.0)
        await asyncio.to_thread(pg.stop, "fast")
        down_at = time.monotonic()
        # A call that starts while the database is down, which stays down until it is answered: it must be
        # refused (fail closed). The workers' own calls may all be settling earlier calls (their Commits
        # retried, then parked) for the whole outage when the machine is loaded, so they cannot show this.
        probe = await rest.chat(client, "up-chat", MESSAGES)
        await asyncio.sleep(max(0.0, 2.0 - (time.monotonic() - down_at)))
        await asyncio.to_thread(pg.start)
        back_at = time.monotonic()
        await asyncio.sleep(6.0)
        stop.set()
        await asyncio.gather(*workers)

        # Answers given while the database was down (REST calls that ended then). Calls reserved before
        # the outage may still finish (their Commit parked in the outbox); nothing new gets a hold.
        outage = Counter(rest.status[rid] for rid, (_, end) in rest.spans.items() if down_at + 0.5 < end < back_at)
        rest_back = [end - back_at for rid, (_, end) in rest.spans.items() if rest.status[rid] == 200
                     and end > back_at and rid not in rest.queued]
        grpc_back = [t - back_at for t in record.successes_after if t > back_at]
        upstream_calls = upstream.calls["up-chat"] - upstream_before

        db = await asyncpg.connect(pg.url)
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and (
                    await db.fetchval(HELD) or await asyncio.to_thread(outbox_count, inference)):
                await asyncio.sleep(0.2)
            held_mc = await db.fetchval(HELD)
            grpc_figures, problems = await reconcile(db, record, grpc_user)
            rest_figures, rest_problems = await reconcile_rest(db, rest, rest_user, inference)
            problems |= rest_problems
            problems["held on the accounts after the sweeper (allocations.held_mc)"] = [
                f"{held_mc} mc"] if held_mc else []
            problems["a REST call made while the database was down was not refused with 503 (fail closed)"] = [
                ] if probe == 503 else [f"answered {probe}; answers during the outage: {dict(outage)}"]
            problems["REST answers other than 200 and 503 while the database was down"] = [
                f"{status}: {n}" for status, n in outage.items() if status not in (200, 503)]
            problems["REST answers other than 200 and 503"] = [
                f"{status}: {n}" for status, n in rest_figures["rest_statuses"].items() if status not in ("200", "503")]
            problems["no REST call answered 200 after the database came back"] = [] if rest_back else ["none"]
            problems["no gRPC commit acknowledged after the database came back"] = [] if grpc_back else ["none"]
            problems["a model was called without a hold (upstream calls != REST 200s)"] = [] if \
                upstream_calls == len(rest.ok()) else [f"upstream={upstream_calls} rest_200={len(rest.ok())}"]
            report("PostgreSQL restart mid-load (2 s down)", rest_during_outage={str(k): v for k, v in outage.items()},
                   rest_call_made_during_outage=probe,
                   upstream_calls=upstream_calls, **rest_figures, **grpc_figures,
                   rest_back_after_s=round(min(rest_back, default=-1), 2),
                   grpc_back_after_s=round(min(grpc_back, default=-1), 2),
                   held_after_sweeper_mc=held_mc, lost=grpc_figures["grpc_lost"] + rest_figures["rest_lost"],
                   charged_twice=grpc_figures["grpc_charged_twice"] + rest_figures["rest_charged_twice"],
                   failed_checks={name: len(found) for name, found in problems.items() if found})
            if verdict := failure_text(problems):
                pytest.fail(verdict, pytrace=False)
            await assert_invariants(db)
        finally:
            await db.close()
    finally:
        inference.stop()
        authority.stop(kill=True)
        pg.stop("immediate")
