"""Failover with no loss: primary + synchronous standby (PostgreSQL streaming
replication), load, SIGKILL the primary, promote the standby, point the
authority at it: every acknowledged commit is there, none twice, every call the
client made (answered or abandoned) is accounted for on the promoted standby,
and the same client goes on there."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import grpc
import pytest
from conftest import AuthorityProcess
from invariants import assert_invariants

from credit_service.migrate import migrate

from .conftest import admin_world, report
from .load import LoadRecord, failure_text, grpc_worker, reconcile
from .pgcluster import ReplicatedCluster

TTL = 3  # seconds: the holds the kill leaves open expire soon after the promotion
HELD = "SELECT count(*) FROM reservations WHERE user_id = $1 AND status = 'held'"


async def test_failover_to_a_synchronous_standby_loses_no_acknowledged_commit(tokens):
    cluster = ReplicatedCluster().start()
    await migrate(cluster.primary.url)
    authority = AuthorityProcess(cluster.primary.url, tokens).start()
    try:
        with grpc.insecure_channel(authority.addr) as channel:
            org, user = admin_world(channel, tokens).funded_member(allocation_mc=100_000_000)
        record = LoadRecord()
        stop = asyncio.Event()
        # patience 0: a call the kill interrupts is abandoned (its outcome unknown, reconciled below).
        workers = [asyncio.create_task(grpc_worker(authority.addr, tokens.spend, user, org, stop, record,
                                                   ttl_seconds=TTL, patience=0.0)) for _ in range(8)]
        await asyncio.sleep(2.0)
        acknowledged_at_kill = len(record.acknowledged)
        cluster.kill_primary()  # mid-load: commits are in flight
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*workers)
        authority.stop(kill=True)
        acknowledged_before_promotion = len(record.acknowledged)

        cluster.promote_standby()
        authority = AuthorityProcess(cluster.standby_url, tokens).start()  # "point the authority at it"
        # The same client goes on against the promoted standby.
        stop = asyncio.Event()
        worker = asyncio.create_task(grpc_worker(authority.addr, tokens.spend, user, org, stop, record, patience=5))
        await asyncio.sleep(1.0)
        stop.set()
        await worker
        commits_after_promotion = len(record.acknowledged) - acknowledged_before_promotion

        db = await asyncpg.connect(cluster.standby_url)
        try:
            # Holds the kill left open expire (TTL) and the new authority's sweeper releases them.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and await db.fetchval(HELD, user):
                await asyncio.sleep(0.2)
            figures, problems = await reconcile(db, record, user)
            await assert_invariants(db)
        finally:
            await db.close()
        problems["no commit acknowledged before the kill"] = [] if acknowledged_at_kill else ["none"]
        problems["no commit acknowledged by the promoted standby"] = [] if commits_after_promotion else ["none"]
        report("failover: SIGKILL primary, promote synchronous standby",
               commits_acknowledged_at_kill=acknowledged_at_kill,
               commits_acknowledged_before_promotion=acknowledged_before_promotion,
               commits_after_promotion=commits_after_promotion, **figures,
               lost=figures["grpc_lost"], charged_twice=figures["grpc_charged_twice"],
               failed_checks={name: len(found) for name, found in problems.items() if found})
        if verdict := failure_text(problems):
            pytest.fail(verdict, pytrace=False)
    finally:
        authority.stop(kill=True)
        cluster.stop()
