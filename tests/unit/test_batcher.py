"""The hot path's group-commit scheduler (credit_service/storage/batcher.py), alone: a batch runner
that is a plain coroutine stands in for credit_batch, so what is tested is only the scheduling —
who shares a batch, in what order, how many batches run at once, and that every caller hears
its own row or its batch's error. (The SQL side is tested against PostgreSQL in
test_concurrent_reserves.py and test_lock_order.py.)"""

from __future__ import annotations

import asyncio

import pytest

from credit_service.storage.batcher import HotPathBatcher


class Runner:
    """Runs a batch by answering each operation's row after the test lets it go (`gate`)."""

    def __init__(self, fail_on: set[str] = frozenset(), drop: set[str] = frozenset()):
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.running = 0
        self.most_running = 0
        self.fail_on = fail_on
        self.drop = drop

    async def __call__(self, operations):
        self.batches.append(list(operations))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await self.gate.wait()
            await asyncio.sleep(0)
            if self.fail_on.intersection(operations):
                raise ConnectionError("the batch's transaction failed")
            return [{"idx": i, "answer": f"row of {op}"} for i, op in enumerate(operations, 1)
                    if op not in self.drop]
        finally:
            self.running -= 1


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_lone_call_goes_direct_and_others_wait_for_the_next_batch_in_arrival_order():
    runner = Runner()
    batcher = HotPathBatcher(runner, max_batch=256, max_in_flight=1)
    assert batcher.claim_direct()  # idle: the lone call takes the single-call path
    assert not batcher.claim_direct()  # busy: the next one must queue
    waiting = [asyncio.ensure_future(batcher.run(f"op{i}")) for i in range(5)]
    await settle()
    assert runner.batches == []  # the direct call holds the only slot
    batcher.release_direct()
    rows = await asyncio.gather(*waiting)
    assert runner.batches == [[f"op{i}" for i in range(5)]]
    assert [row["answer"] for row in rows] == [f"row of op{i}" for i in range(5)]
    assert batcher.in_flight == 0 and batcher.claim_direct()


async def test_batches_are_cut_at_max_batch_and_never_more_than_max_in_flight_run_at_once():
    runner = Runner()
    runner.gate.clear()
    batcher = HotPathBatcher(runner, max_batch=4, max_in_flight=2)
    calls = [asyncio.ensure_future(batcher.run(i)) for i in range(11)]
    await settle()
    # An idle system sends batches of one: the first two calls each start a batch, the rest queue.
    assert runner.batches == [[0], [1]] and runner.running == 2
    runner.gate.set()
    rows = await asyncio.gather(*calls)
    assert runner.batches == [[0], [1], [2, 3, 4, 5], [6, 7, 8, 9], [10]]
    assert runner.most_running == 2
    assert [row["answer"] for row in rows] == [f"row of {i}" for i in range(11)]


async def test_a_failed_batch_fails_each_of_its_callers_and_the_next_batch_still_runs():
    runner = Runner(fail_on={"bad"})
    batcher = HotPathBatcher(runner, max_batch=2, max_in_flight=1)
    assert batcher.claim_direct()
    first = [asyncio.ensure_future(batcher.run(op)) for op in ("ok1", "bad")]
    second = [asyncio.ensure_future(batcher.run(op)) for op in ("ok2", "ok3")]
    await settle()
    batcher.release_direct()
    outcomes = await asyncio.gather(*first, return_exceptions=True)
    assert all(isinstance(outcome, ConnectionError) for outcome in outcomes)
    assert [row["answer"] for row in await asyncio.gather(*second)] == ["row of ok2", "row of ok3"]
    assert runner.batches == [["ok1", "bad"], ["ok2", "ok3"]]
    assert batcher.in_flight == 0


async def test_an_operation_the_batch_answers_no_row_for_fails_instead_of_waiting_forever():
    batcher = HotPathBatcher(Runner(drop={"lost"}), max_batch=8, max_in_flight=1)
    assert batcher.claim_direct()
    lost, kept = asyncio.ensure_future(batcher.run("lost")), asyncio.ensure_future(batcher.run("kept"))
    await settle()
    batcher.release_direct()
    assert (await kept)["answer"] == "row of kept"
    with pytest.raises(RuntimeError, match="no row"):
        await asyncio.wait_for(lost, timeout=5)


def test_limits_below_one_are_refused():
    for max_batch, max_in_flight in ((0, 1), (1, 0)):
        with pytest.raises(ValueError):
            HotPathBatcher(Runner(), max_batch=max_batch, max_in_flight=max_in_flight)
