"""Reserve never lets holds and usage exceed the limit, under real concurrency in the database.

The races run against two authority processes, the calls spread over both, each process with
several small hot-path batches in flight: many transactions are in PostgreSQL at once and queue on
the same account row (credit_batch reads accounts FOR UPDATE). A separate connection samples
pg_stat_activity while a race runs, and each race asserts what it saw: hot-path transactions of
both processes at the same instant, and backends waiting on a lock. With one batch in flight in
one process the database would see the calls one transaction after another, and a missing
FOR UPDATE would go unnoticed.

The duplicate test fires the same request_id from both processes at the same instant, 200 times:
the losers replay the winner's reservation from other transactions, and the authority's
credit_reserve_retries_total counter shows that the retry branch (a concurrent Reserve with this
request_id won) was taken.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field

import asyncpg
import grpc
import pytest
from conftest import Stub
from helpers import error_info, reserve_request
from invariants import assert_invariants
from two_authorities import APP_PREFIX

from credit.v1 import authority_pb2, authority_pb2_grpc, types_pb2

CALLS = 500
AMOUNT = 1_000
K = 37
DUPLICATED_IDS = 200
DUPLICATES = 4  # per request_id, half on each process


HOT_PATH_SQL = r"credit_(batch|reserve_op|commit|release)\("
SAMPLE_SQL = f"""
    SELECT count(*) FILTER (WHERE hot) AS in_transaction,
           count(*) FILTER (WHERE hot AND wait_event_type = 'Lock') AS waiting,
           count(DISTINCT application_name) FILTER (WHERE hot) AS processes
      FROM (SELECT application_name, wait_event_type,
                   state IN ('active', 'idle in transaction') AND query ~ '{HOT_PATH_SQL}' AS hot
              FROM pg_stat_activity
             WHERE datname = current_database() AND application_name LIKE '{APP_PREFIX}%') a"""


@dataclass
class ActivitySampler:
    """Samples pg_stat_activity from its own connection for as long as the block runs."""

    database_url: str
    samples: list[tuple[int, int, int]] = field(default_factory=list)

    async def __aenter__(self) -> ActivitySampler:
        self._conn = await asyncpg.connect(self.database_url)
        self._stop = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def _run(self) -> None:
        while not self._stop.is_set():
            row = await self._conn.fetchrow(SAMPLE_SQL)
            self.samples.append((row["in_transaction"], row["waiting"], row["processes"]))
            await asyncio.sleep(0)

    async def __aexit__(self, *exc) -> None:
        self._stop.set()
        await self._task
        await self._conn.close()

    def figures(self) -> dict[str, int]:
        return {
            "samples": len(self.samples),
            "max_hot_path_transactions": max(n for n, _, _ in self.samples),
            "samples_with_2plus_transactions": sum(n >= 2 for n, _, _ in self.samples),
            "samples_with_both_processes": sum(p >= 2 for _, _, p in self.samples),
            "samples_with_lock_waits": sum(w >= 1 for _, w, _ in self.samples),
            "max_lock_waiters": max(w for _, w, _ in self.samples),
        }

    def assert_overlapped(self, name: str) -> None:
        """At one instant ≥ 2 hot-path transactions of both processes were in the database, and at
        some instant a hot-path backend waited on a lock (the account row another one holds)."""
        figures = self.figures()
        print(f"\nRACE-FIGURES {json.dumps({'race': name, **figures})}")
        assert figures["samples_with_2plus_transactions"] >= 1, figures
        assert figures["samples_with_both_processes"] >= 1, figures
        assert figures["samples_with_lock_waits"] >= 1, figures


async def _race(spenders, user_id: str, org_id: str) -> tuple[list, list]:
    async def one(i: int):
        try:
            return await spenders[i % len(spenders)].Reserve(
                reserve_request(user_id, AMOUNT, org_id, request_id=f"race-{user_id}-{i}"))
        except grpc.aio.AioRpcError as error:
            return error

    results = await asyncio.gather(*(one(i) for i in range(CALLS)))
    granted = [r for r in results if isinstance(r, authority_pb2.ReserveResponse)]
    refused = [r for r in results if not isinstance(r, authority_pb2.ReserveResponse)]
    return granted, refused


def _assert_exactly_k(granted, refused, funding_kind):
    assert len(granted) == K
    assert len(refused) == CALLS - K
    assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    for error in refused:
        info = error_info(error)
        assert info is not None and info.reason == "INSUFFICIENT_CREDITS"
        assert int(info.metadata["requested"]) == AMOUNT
        assert int(info.metadata["available"]) < AMOUNT
    assert len({g.reservation_id for g in granted}) == K
    assert {g.funding.kind for g in granted} == {funding_kind}
    assert sorted(g.available_millicredits for g in granted) == [AMOUNT * i + 999 for i in range(K)]


async def test_concurrent_reserves_never_exceed_allocation(world, spenders, spend, db, database_url):
    org_id, user_id = world.funded_member(allocation_mc=K * AMOUNT + 999)
    async with ActivitySampler(database_url) as activity:
        granted, refused = await _race(spenders, user_id, org_id)
    _assert_exactly_k(granted, refused, types_pb2.Funding.ORG)
    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=user_id, org_id=org_id))
    assert (balance.held_millicredits, balance.available_millicredits) == (K * AMOUNT, 999)
    await assert_invariants(db)
    activity.assert_overlapped("allocation")


async def test_concurrent_reserves_never_exceed_individual_balance(world, spenders, spend, db, database_url):
    user_id = world.user(individual_mc=K * AMOUNT + 999)
    async with ActivitySampler(database_url) as activity:
        granted, refused = await _race(spenders, user_id, "")
    _assert_exactly_k(granted, refused, types_pb2.Funding.INDIVIDUAL)
    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=user_id))
    assert (balance.held_millicredits, balance.available_millicredits) == (K * AMOUNT, 999)
    await assert_invariants(db)
    activity.assert_overlapped("individual")


async def test_concurrent_reserve_commit_release_mix_keeps_invariants(world, spenders, db, database_url):
    org_id, user_id = world.funded_member(allocation_mc=200 * AMOUNT)

    async def cycle(i: int):
        # Reserve on one process, finalize on the other.
        try:
            hold = await spenders[i % 2].Reserve(reserve_request(user_id, AMOUNT, org_id))
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            return 0
        if i % 3 == 0:
            await spenders[(i + 1) % 2].Release(authority_pb2.ReleaseRequest(reservation_id=hold.reservation_id))
            return 0
        charged = AMOUNT // 2 if i % 3 == 1 else AMOUNT + 10  # below the hold, or an overrun
        await spenders[(i + 1) % 2].Commit(authority_pb2.CommitRequest(reservation_id=hold.reservation_id,
                                                                       amount_millicredits=charged))
        return charged

    async with ActivitySampler(database_url) as activity:
        charged = sum(await asyncio.gather(*(cycle(i) for i in range(300))))
    used = await db.fetchval("SELECT used_mc FROM allocations WHERE org_id = $1 AND user_id = $2", org_id, user_id)
    assert used == charged
    await assert_invariants(db)
    activity.assert_overlapped("reserve-commit-release")


async def test_same_request_id_concurrently_makes_one_hold(world, spenders, spend, db):
    org_id, user_id = world.funded_member(allocation_mc=100 * AMOUNT)
    request = reserve_request(user_id, AMOUNT, org_id, request_id=f"dup-{user_id}")
    results = await asyncio.gather(*(spenders[i % 2].Reserve(request) for i in range(50)))
    assert len({r.reservation_id for r in results}) == 1
    assert await db.fetchval("SELECT count(*) FROM reservations WHERE request_id = $1", request.request_id) == 1
    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=user_id, org_id=org_id))
    assert balance.held_millicredits == AMOUNT

    retry = spend.Reserve(request)
    assert retry.reservation_id == results[0].reservation_id
    assert retry.reserved_millicredits == AMOUNT
    assert retry.replayed and retry.status == "held"
    assert sum(not r.replayed for r in results) == 1

    other = authority_pb2.ReserveRequest()
    other.CopyFrom(request)
    other.amount_millicredits = AMOUNT * 2
    with pytest.raises(grpc.RpcError) as raised:
        spend.Reserve(other)
    assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=user_id, org_id=org_id)).held_millicredits == AMOUNT
    await assert_invariants(db)


async def test_duplicates_across_processes_replay_and_take_the_retry_branch(world, authorities, spenders, spend,
                                                                          db):
    """DUPLICATED_IDS request ids, each sent DUPLICATES times at the same instant, half to each
    process. Per id: one reservation row, one hold, every duplicate answered with the winner's
    reservation_id, exactly one answer not replayed. The duplicates sent to the process that did not
    win ran in other transactions than the winner's: they are cross-transaction replays. A lone call
    takes the single-call path (credit_reserve_op), which checks for the request_id before it locks
    the account; when both processes' lone calls pass that check, the loser's insert meets the
    winner's row and it answers "retry", which storage.reserve counts and runs again."""
    org_id, user_id = world.funded_member(allocation_mc=(DUPLICATED_IDS + 1) * AMOUNT)
    retries_before = [a.reserve_retries() for a in authorities]

    cross_process_replays = 0
    for n in range(DUPLICATED_IDS):
        request = reserve_request(user_id, AMOUNT, org_id, request_id=f"dup-{user_id}-{n}")
        answers = await asyncio.gather(*(spenders[i % 2].Reserve(request) for i in range(DUPLICATES)))
        assert len({a.reservation_id for a in answers}) == 1, answers
        assert [a.reserved_millicredits for a in answers] == [AMOUNT] * DUPLICATES
        winners = [i for i, a in enumerate(answers) if not a.replayed]
        assert len(winners) == 1, answers
        cross_process_replays += sum(a.replayed for i, a in enumerate(answers) if i % 2 != winners[0] % 2)

    rows = await db.fetch("""SELECT r.request_id, count(DISTINCT r.reservation_id) AS reservations,
                                    count(e.*) AS holds
                               FROM reservations r
                               LEFT JOIN ledger_entries e ON e.reservation_id = r.reservation_id AND e.kind = 'hold'
                              WHERE r.user_id = $1 GROUP BY 1""", user_id)
    assert len(rows) == DUPLICATED_IDS
    assert {(r["reservations"], r["holds"]) for r in rows} == {(1, 1)}
    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=user_id, org_id=org_id))
    assert (balance.held_millicredits, balance.available_millicredits) == (DUPLICATED_IDS * AMOUNT, AMOUNT)
    await assert_invariants(db)

    retries: Counter = Counter()
    for authority, before in zip(authorities, retries_before, strict=True):
        retries.update(authority.reserve_retries() - before)
    figures = {"race": "duplicates", "request_ids": DUPLICATED_IDS, "duplicates_each": DUPLICATES,
               "reservation_rows": len(rows), "cross_process_replays": cross_process_replays,
               "retries_single": retries["single"], "retries_batch": retries["batch"]}
    print(f"\nRACE-FIGURES {json.dumps(figures)}")
    assert cross_process_replays == DUPLICATED_IDS * DUPLICATES // 2
    assert sum(retries.values()) > 0, figures


def test_request_ids_are_scoped_per_caller(world, spend, channel, tokens):
    other = Stub(authority_pb2_grpc.CreditAuthorityStub(channel), tokens.other_spend)
    org_id, user_id = world.funded_member(allocation_mc=10 * AMOUNT)
    request = reserve_request(user_id, AMOUNT, org_id, request_id="shared-id-" + user_id)
    first = spend.Reserve(request)
    second = other.Reserve(request)
    assert first.reservation_id != second.reservation_id
    # A caller cannot finalize another caller's reservation.
    with pytest.raises(grpc.RpcError) as raised:
        other.Commit(authority_pb2.CommitRequest(reservation_id=first.reservation_id, amount_millicredits=1))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
