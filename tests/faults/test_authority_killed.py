"""SIGKILL the authority under steady gRPC and REST load while a hot-path transaction waits in
PostgreSQL, restart it: nothing lost, nothing twice, every call the clients made accounted for.

The transaction the kill leaves behind lands after the authority is gone, so its answers are lost:
the clients retry those Reserves and Commits against the restarted authority, which must replay
them (a Commit replayed as "already finalized" would look refused here)."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import openai
import pytest
from invariants import assert_invariants

from credit.v1 import authority_pb2

from .conftest import InferenceProcess, RestRecord, make_key, outbox_count, reconcile_rest, report
from .load import LoadRecord, failure_text, grpc_worker, reconcile

MESSAGES = [{"role": "user", "content": "Hello"}]
GRPC_WORKERS, REST_WORKERS = 8, 4

# Hot-path statements of an authority waiting for a lock the given backend holds.
BLOCKED = """SELECT count(*) FROM pg_stat_activity
              WHERE $1 = ANY(pg_blocking_pids(pid)) AND query ~ 'credit_(batch|commit|reserve_op|release)'"""
STATES = "SELECT reservation_id, status FROM reservations WHERE user_id = ANY($1)"
HOLDS = "SELECT 1 FROM reservations WHERE user_id = $1 AND status = 'held' FOR UPDATE"
ACCOUNTS = "SELECT 1 FROM allocations WHERE user_id = ANY($1) FOR UPDATE"


async def wait_blocked(db, pid: int) -> int:
    deadline = time.monotonic() + 15
    while not (blocked := await db.fetchval(BLOCKED, pid)) and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    return blocked


async def test_authority_sigkill_under_load_loses_nothing(own_authority, tokens, world, admin, spend, db,
                                                          database_url, models_file):
    inference = InferenceProcess(own_authority, tokens.spend, models_file,
                                 {"INFERENCE_RESERVE_TTL_SECONDS": "3"}).start()
    try:
        org, grpc_user = world.funded_member(allocation_mc=10_000_000)
        rest_org, rest_user = world.funded_member(allocation_mc=10_000_000)
        users = [grpc_user, rest_user]
        key, _ = make_key(admin, rest_user)
        client = openai.AsyncOpenAI(base_url=inference.base_url, api_key=key, max_retries=0, timeout=30)
        record = LoadRecord()
        rest = RestRecord()
        stop = asyncio.Event()

        async def rest_worker():
            while not stop.is_set():
                if await rest.chat(client, "demo-chat", MESSAGES) != 200:
                    await asyncio.sleep(0.05)

        gate = asyncio.Event()
        gate.set()
        workers = [asyncio.create_task(grpc_worker(own_authority.addr, tokens.spend, grpc_user, org, stop, record,
                                                   gate=gate)) for _ in range(GRPC_WORKERS)]
        workers += [asyncio.create_task(rest_worker()) for _ in range(REST_WORKERS)]
        await asyncio.sleep(1.5)
        before_kill = len(record.acknowledged)

        # The kill: lock the gRPC load's open holds, so the next Commit of one waits in PostgreSQL with its
        # transaction; kill the authority then, and let go: that transaction lands with nobody to answer it.
        lock = await asyncpg.connect(database_url)
        try:
            async with lock.transaction():
                while not await lock.fetch(HOLDS, grpc_user):
                    await asyncio.sleep(0.01)
                waiting_at_kill = await wait_blocked(db, lock.get_server_pid())
                in_flight = await db.fetchval("SELECT count(*) FROM reservations WHERE status = 'held' "
                                              "AND user_id = ANY($1)", users)
                before = dict(await db.fetch(STATES, users))
                own_authority.stop(kill=True)
                gate.clear()  # the gRPC clients' next attempts wait: they are let go together below
        finally:
            await lock.close()
        await asyncio.sleep(1.0)
        # What changed on the load's accounts while no authority was running: the dead one's transaction.
        after = dict(await db.fetch(STATES, users))
        landed = {"holds": len(after.keys() - before.keys()),
                  "commits": sum(1 for rid, status in after.items()
                                 if status == "committed" and before.get(rid) != "committed")}

        # The restart: the gRPC clients' retries (those of the lost answers among them) arrive together
        # while a REST call's transaction waits for the accounts, so the authority runs them as one batch.
        own_authority.start(port=own_authority.port)
        restarted = time.monotonic()
        lock = await asyncpg.connect(database_url)
        try:
            async with lock.transaction():
                await lock.execute(ACCOUNTS, users)
                waiting_at_restart = await wait_blocked(db, lock.get_server_pid())
                deadline = time.monotonic() + 15
                while record.at_gate < GRPC_WORKERS and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                let_go = record.at_gate
                gate.set()
                await asyncio.sleep(0.3)  # the retries reach the authority and queue behind the waiting one
        finally:
            await lock.close()
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.gather(*workers)

        # Dead requests' holds expire (TTL 3 s) and the sweeper releases them; the outbox drains.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (
                await db.fetchval("SELECT count(*) FROM reservations WHERE status = 'held' AND user_id = ANY($1)",
                                  users) or await asyncio.to_thread(outbox_count, inference)):
            await asyncio.sleep(0.2)

        grpc_figures, problems = await reconcile(db, record, grpc_user)
        rest_figures, rest_problems = await reconcile_rest(db, rest, rest_user, inference)
        problems |= rest_problems
        problems["the load did not run before the kill"] = [] if before_kill else ["no commit acknowledged"]
        problems["no hot-path transaction was waiting at the kill"] = [] if waiting_at_kill else ["none seen"]
        problems["no Commit landed after the kill (no answer was lost)"] = [] if landed["commits"] else [
            "no commit landed while the authority was dead"]
        problems["no hot-path transaction was waiting at the restart"] = [] if waiting_at_restart else ["none seen"]
        problems["gRPC clients not all held for the restart"] = [] if let_go == GRPC_WORKERS else [
            f"{let_go} of {GRPC_WORKERS}"]
        problems["no gRPC commit acknowledged after the restart"] = [] if any(
            t > restarted for t in record.successes_after) else ["none"]
        problems["no REST call answered 200 after the restart"] = [] if any(
            rest.status[rid] == 200 and rest.spans[rid][1] > restarted for rid in rest.status) else ["none"]
        # The outage is shorter than the client's patience (8 s): at most the call each worker had in
        # flight may be abandoned, and reconcile() has checked what became of each.
        problems[f"more abandoned gRPC calls than workers ({GRPC_WORKERS})"] = [
            f"{record.given_up} abandoned"] if record.given_up > GRPC_WORKERS else []
        problems["REST answers other than 200 and 503 (fail closed)"] = [
            f"{status}: {n}" for status, n in rest_figures["rest_statuses"].items() if status not in ("200", "503")]
        for user in users:
            used = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=user)).used_millicredits
            charged = await db.fetchval("SELECT coalesce(sum(credits_used), 0) FROM usage_attribution "
                                        "WHERE user_id = $1", user)
            problems[f"cached used differs from the attribution rows ({user})"] = [] if used == charged else [
                f"used={used} rows={charged}"]
        report("authority SIGKILL under load", holds_in_flight_at_kill=in_flight,
               transactions_waiting_at_kill=waiting_at_kill, transactions_waiting_at_restart=waiting_at_restart,
               grpc_clients_let_go_together=let_go, landed_unanswered_holds=landed["holds"],
               landed_unanswered_commits=landed["commits"], **grpc_figures, **rest_figures,
               lost=grpc_figures["grpc_lost"] + rest_figures["rest_lost"],
               charged_twice=grpc_figures["grpc_charged_twice"] + rest_figures["rest_charged_twice"],
               failed_checks={name: len(found) for name, found in problems.items() if found})
        if verdict := failure_text(problems):
            pytest.fail(verdict, pytrace=False)
        await assert_invariants(db)
    finally:
        inference.stop()
