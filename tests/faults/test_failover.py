"""Failover with no loss: primary + synchronous standby (PostgreSQL streaming
replication), load, SIGKILL the primary, promote the standby, point the
authority at it: every acknowledged commit is there, none twice."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
from conftest import AuthorityProcess
from invariants import assert_invariants

from credit_service.migrate import migrate

from .conftest import admin_world, report
from .load import LoadRecord, grpc_worker, verify_acknowledged
from .pgcluster import ReplicatedCluster


async def test_failover_to_a_synchronous_standby_loses_no_acknowledged_commit(tokens):
    cluster = ReplicatedCluster().start()
    await migrate(cluster.primary.url)
    authority = AuthorityProcess(cluster.primary.url, tokens).start()
    try:
        with grpc.insecure_channel(authority.addr) as channel:
            org, user = admin_world(channel, tokens).funded_member(allocation_mc=100_000_000)
        record = LoadRecord()
        stop = asyncio.Event()
        workers = [asyncio.create_task(grpc_worker(authority.addr, tokens.spend, user, org, stop, record,
                                                   ttl_seconds=60, patience=0.0)) for _ in range(8)]
        await asyncio.sleep(2.0)
        acknowledged_before_kill = len(record.acknowledged)
        cluster.kill_primary()  # mid-load: commits are in flight
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*workers)
        authority.stop(kill=True)

        cluster.promote_standby()
        authority = AuthorityProcess(cluster.standby_url, tokens).start()  # "point the authority at it"
        db = await asyncpg.connect(cluster.standby_url)
        try:
            await verify_acknowledged(db, record)
            await assert_invariants(db)
            rows = await db.fetchval("SELECT count(*) FROM usage_attribution WHERE user_id = $1", user)
        finally:
            await db.close()
        assert acknowledged_before_kill > 0 and len(record.acknowledged) >= acknowledged_before_kill

        # The promoted standby serves: a new reserve and commit work.
        after = LoadRecord()
        stop = asyncio.Event()
        worker = asyncio.create_task(grpc_worker(authority.addr, tokens.spend, user, org, stop, after, patience=5))
        await asyncio.sleep(1.0)
        stop.set()
        await worker
        assert after.acknowledged, "the promoted standby does not serve"
        report("failover: SIGKILL primary, promote synchronous standby",
               commits_acknowledged=len(record.acknowledged), rows_on_standby=rows,
               unacknowledged_but_committed=rows - len(record.acknowledged),
               commits_after_promotion=len(after.acknowledged), lost=0, duplicated=0)
    finally:
        authority.stop(kill=True)
        cluster.stop()
