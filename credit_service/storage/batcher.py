"""Group commit for the hot path, as a scheduler that knows nothing of SQL.

Operations that arrive while earlier batches are in the database share the next
batch; an idle system sends batches of one, so nothing waits for a timer. Every
caller is answered only after its batch's transaction ended: with its own row,
or with the batch's error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from .. import metrics

Operation = TypeVar("Operation")
# Runs one batch in one transaction; answers one row per operation, each naming its
# operation's 1-based position in the batch under "idx".
BatchRunner = Callable[[Sequence[Any]], Awaitable[Sequence[Mapping[str, Any]]]]


class HotPathBatcher(Generic[Operation]):
    def __init__(self, run_batch: BatchRunner, max_batch: int = 256, max_in_flight: int = 1):
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be at least 1")
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._queue: list[tuple[Operation, asyncio.Future]] = []
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        """Batches (and lone direct calls) in the database now."""
        return self._in_flight

    def claim_direct(self) -> bool:
        """When nothing is queued or in the database, a lone call takes the single-call
        path (simpler SQL, same guarantees), holding an in-flight slot meanwhile."""
        if self._in_flight or self._queue:
            return False
        self._in_flight += 1
        return True

    def release_direct(self) -> None:
        self._in_flight -= 1
        self._launch_if_free()

    async def run(self, operation: Operation) -> Mapping[str, Any]:
        """Queues the operation for the next batch and answers its row."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append((operation, future))
        self._launch_if_free()
        return await future

    def _launch_if_free(self) -> None:
        if self._queue and self._in_flight < self._max_in_flight:
            batch, self._queue = self._queue[:self._max_batch], self._queue[self._max_batch:]
            self._in_flight += 1
            asyncio.get_running_loop().create_task(self._execute(batch))

    async def _execute(self, batch: list[tuple[Operation, asyncio.Future]]) -> None:
        try:
            rows = await self._run_batch([operation for operation, _ in batch])
            metrics.BATCH_SIZE.observe(len(batch))
            for row in rows:
                future = batch[row["idx"] - 1][1]
                if not future.done():
                    future.set_result(row)
            for _, future in batch:  # a row the batch did not answer is an error, never a hang
                if not future.done():
                    future.set_exception(RuntimeError("the batch returned no row for this operation"))
        except BaseException as error:  # the whole transaction failed: every caller hears it
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
        finally:
            self._in_flight -= 1
            self._launch_if_free()
