"""Failover with no operator: etcd and a Patroni cluster of two nodes (synchronous mode) from the
committed deploy/patroni/ files, one authority process on a multi-host DATABASE_URL
(target_session_attrs=read-write) and the REST service, load through both; then SIGKILL the
primary's PostgreSQL (case 1) or its Patroni (case 2). Nothing in the test promotes anything:
Patroni elects the synchronous standby, the authority finds it by itself, and the old primary
rejoins as the new synchronous standby (pg_rewind). Every acknowledged charge is there exactly once.

Case 2 models a Patroni process that dies and is started again by its supervisor once the other
node has taken over (the leader key expired after the DCS ttl): without a watchdog its PostgreSQL
keeps running as a primary meanwhile, but synchronous mode leaves it unable to acknowledge a commit,
and the restarted Patroni demotes and rewinds it."""

from __future__ import annotations

import asyncio
import time
import urllib.request

import asyncpg
import grpc
import openai
import pytest
from conftest import AuthorityProcess, Stub, free_port
from invariants import assert_invariants

from credit.v1 import admin_pb2, admin_pb2_grpc
from credit_service.embedded_db import DATABASE_NAME
from credit_service.migrate import migrate

from .conftest import InferenceProcess, RestRecord, admin_world, make_key, outbox_count, reconcile_rest, report
from .load import LoadRecord, Problems, failure_text, grpc_worker, reconcile
from .patroni_cluster import PatroniCluster

MESSAGES = [{"role": "user", "content": "Hello"}]
SETTLED = "SELECT (SELECT count(*) FROM reservations WHERE status = 'held') + " \
          "(SELECT coalesce(sum(held_mc), 0) FROM allocations)"
LOST = "gRPC: acknowledged commit not charged exactly once with its amount (lost)"
# The authority's own connections on a node (the read pool's, on the standby).
CLIENTS = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() " \
          "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"


async def _reserve_times(record: LoadRecord, stop: asyncio.Event, times: list[float]) -> None:
    """When Reserves were answered OK (sampled every 20 ms)."""
    seen = 0
    while not stop.is_set():
        if len(record.reserved) > seen:
            seen = len(record.reserved)
            times.append(time.monotonic())
        await asyncio.sleep(0.02)


def _longest_gap(times: list[float], since: float) -> tuple[float, float]:
    """(seconds without an OK Reserve, seconds from `since` until the first OK Reserve after that gap)."""
    after = [since] + [t for t in times if t > since]
    gaps = [(b - a, b) for a, b in zip(after, after[1:], strict=False)]
    if not gaps:
        return -1.0, -1.0
    gap, end = max(gaps)
    return round(gap, 2), round(end - since, 2)


async def _kill(cluster: PatroniCluster, old: str, what: str) -> None:
    node = cluster.node(old)
    if what == "postgres":
        node.kill_postgres()  # Patroni (primary_start_timeout 0) fails over instead of restarting it
        return
    node.kill_patroni()
    deadline = time.monotonic() + 60
    while await asyncio.to_thread(cluster.leader) in (None, old):
        if time.monotonic() > deadline:
            raise RuntimeError("no other node took the leader key after the old leader's Patroni died")
        await asyncio.sleep(0.2)
    node.start()  # its supervisor starts it again: it finds another leader, demotes and rewinds


@pytest.mark.parametrize("what", ["postgres", "patroni"])
async def test_patroni_fails_over_by_itself_and_loses_no_acknowledged_charge(what, tokens, models_file, upstream):
    cluster = await asyncio.to_thread(PatroniCluster().start)
    authority: AuthorityProcess | None = None
    inference: InferenceProcess | None = None
    try:
        await migrate(cluster.url)
        # Slow reads on the standby: the same hosts, any that is a standby first (DATABASE_READ_URL).
        read_url = cluster.url.replace("target_session_attrs=read-write", "target_session_attrs=prefer-standby")
        authority = AuthorityProcess(cluster.url, tokens, {
            "DATABASE_READ_URL": read_url, "CREDIT_METRICS_PORT": str(free_port()),
            "CREDIT_READ_LAG_INTERVAL_SECONDS": "0.5"}).start()
        inference = InferenceProcess(authority, tokens.spend, models_file,
                                     {"INFERENCE_RESERVE_TTL_SECONDS": "3"}).start()
        await _run(cluster, authority, inference, what, tokens, upstream)
    finally:
        if inference is not None:
            inference.stop()
        if authority is not None:
            authority.stop(kill=True)
        await asyncio.to_thread(cluster.stop)


async def _run(cluster: PatroniCluster, authority: AuthorityProcess, inference: InferenceProcess, what: str,
               tokens, upstream) -> None:
    with grpc.insecure_channel(authority.addr) as channel:
        world = admin_world(channel, tokens)
        org, grpc_user = world.funded_member(allocation_mc=100_000_000)
        _, rest_user = world.funded_member(allocation_mc=100_000_000)
        key, _ = make_key(Stub(admin_pb2_grpc.CreditAdminStub(channel), tokens.admin), rest_user)
    client = openai.AsyncOpenAI(base_url=inference.base_url, api_key=key, max_retries=0, timeout=60)
    record, rest, stop, reserves = LoadRecord(), RestRecord(), asyncio.Event(), []
    upstream_before = upstream.calls["up-chat"]

    async def rest_worker():
        while not stop.is_set():
            if await rest.chat(client, "up-chat", MESSAGES) != 200:
                await asyncio.sleep(0.05)

    # A careful client: a call is retried with the same request for up to 60 s (it never gives up here).
    workers = [asyncio.create_task(grpc_worker(authority.addr, tokens.spend, grpc_user, org, stop, record,
                                               patience=60.0)) for _ in range(4)]
    workers += [asyncio.create_task(rest_worker()) for _ in range(2)]
    workers.append(asyncio.create_task(_reserve_times(record, stop, reserves)))
    await asyncio.sleep(2.0)
    old = await asyncio.to_thread(cluster.leader)
    replica_reads = await _replica_reads(cluster, authority, tokens, grpc_user, old)
    acknowledged_at_kill = dict(record.acknowledged)
    killed_at = time.monotonic()
    await _kill(cluster, old, what)
    new, sync = await asyncio.to_thread(cluster.wait_healthy, 120, old)
    rejoined_after = round(time.monotonic() - killed_at, 2)
    await asyncio.sleep(2.0)  # load goes on against the new primary with its new synchronous standby
    stop.set()
    await asyncio.gather(*workers)
    gap, back_after = _longest_gap(reserves, killed_at)
    members = await asyncio.to_thread(cluster.members)
    outcome = {"killed": what, "old_primary": old, "new_primary": new, "old_primary_now": members[old]["role"],
               "old_primary_state": members[old]["state"], "commits_acknowledged_at_kill": len(acknowledged_at_kill),
               "longest_gap_without_an_ok_reserve_s": gap, "reserves_back_after_kill_s": back_after,
               "rejoined_as_sync_standby_after_kill_s": rejoined_after,
               "upstream_calls": upstream.calls["up-chat"] - upstream_before, **replica_reads}
    db = await asyncpg.connect(cluster.url)
    try:
        deadline = time.monotonic() + 30  # the holds of abandoned calls expire (3 s) and are swept
        while time.monotonic() < deadline and (await db.fetchval(SETTLED) or outbox_count(inference)):
            await asyncio.sleep(0.2)
        figures, problems = await reconcile(db, record, grpc_user)
        rest_figures, rest_problems = await reconcile_rest(db, rest, rest_user, inference)
        _judge(outcome, problems | rest_problems, figures | rest_figures, acknowledged_at_kill, sync, len(rest.ok()))
        await assert_invariants(db)
    finally:
        await db.close()


async def _replica_reads(cluster: PatroniCluster, authority: AuthorityProcess, tokens, user_id: str,
                         leader: str | None) -> dict:
    """Before the kill: a usage query answered by the authority, its read pool's connections on the standby
    (not the primary), and the standby's replay lag as the authority exports it."""
    def query_usage() -> admin_pb2.QueryUsageResponse:
        with grpc.insecure_channel(authority.addr) as channel:
            admin = Stub(admin_pb2_grpc.CreditAdminStub(channel), tokens.admin)
            return admin.QueryUsage(admin_pb2.QueryUsageRequest(user_id=user_id))

    usage = await asyncio.to_thread(query_usage)
    standby = next(node for node in cluster.nodes if node.name != leader)
    conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{standby.pg_port}/{DATABASE_NAME}")
    try:
        in_recovery, clients = await conn.fetchval("SELECT pg_is_in_recovery()"), await conn.fetchval(CLIENTS)
    finally:
        await conn.close()
    port = authority.extra_env["CREDIT_METRICS_PORT"]
    with await asyncio.to_thread(urllib.request.urlopen, f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    lag = [float(line.split()[-1]) for line in text.splitlines()
           if line.startswith("credit_read_replica_lag_seconds ")]
    return {"usage_rows_read_on_standby": usage.total_requests, "standby_in_recovery": in_recovery,
            "authority_connections_on_standby": clients, "read_replica_lag_s": lag[0] if lag else None}


def _judge(outcome: dict, problems: Problems, figures: dict, acknowledged_at_kill: dict, sync: str,
           rest_ok: int) -> None:
    """Reports the run's figures (FAULT-FIGURES) and fails on any problem."""
    problems["slow reads not on the standby (DATABASE_READ_URL, prefer-standby)"] = [] if (
        outcome["standby_in_recovery"] and outcome["authority_connections_on_standby"]) else [
        f"standby in recovery: {outcome['standby_in_recovery']}, "
        f"authority connections there: {outcome['authority_connections_on_standby']}"]
    problems["the standby's replay lag not exported (credit_read_replica_lag_seconds)"] = [] if \
        outcome["read_replica_lag_s"] is not None else ["missing"]
    lost_before_kill = [line for line in problems[LOST] if line.split()[0] in acknowledged_at_kill]
    problems["gRPC: commit acknowledged before the kill missing afterwards"] = lost_before_kill
    problems["no commit acknowledged before the kill"] = [] if acknowledged_at_kill else ["none"]
    problems["no Reserve succeeded after the failover"] = [] if outcome["reserves_back_after_kill_s"] > 0 else [
        "none"]
    problems["the old primary did not rejoin as the synchronous standby"] = [] if sync == outcome["old_primary"] \
        else [f"synchronous standby {sync}"]
    problems["REST answers other than 200 and 503"] = [
        f"{status}: {n}" for status, n in figures["rest_statuses"].items() if status not in ("200", "503")]
    problems["a model was called without a hold (upstream calls != REST 200s)"] = [] if \
        outcome["upstream_calls"] == rest_ok else [f"upstream={outcome['upstream_calls']} rest_200={rest_ok}"]
    killed = "PostgreSQL" if outcome["killed"] == "postgres" else "Patroni"
    report(f"Patroni failover: SIGKILL the primary's {killed}", **outcome,
           lost_acknowledged_before_kill=len(lost_before_kill), **figures,
           lost=figures["grpc_lost"] + figures["rest_lost"],
           charged_twice=figures["grpc_charged_twice"] + figures["rest_charged_twice"],
           failed_checks={name: len(found) for name, found in problems.items() if found})
    if verdict := failure_text(problems):
        pytest.fail(verdict, pytrace=False)
