"""The read pool's gauges: how far its server is behind the primary (credit_read_replica_lag_seconds, 0 on a
primary) and its connections, sampled every interval. A sample that fails is logged and leaves the last
figures: the read pool's server being away never touches the hot path or the health status."""

from __future__ import annotations

import asyncio
import logging

from .. import metrics
from ..storage import Storage

log = logging.getLogger("credit_service")


async def sample_read_pool(storage: Storage) -> None:
    """One sample of the read pool's gauges."""
    metrics.READ_REPLICA_LAG.set(await storage.read_replica_lag())
    size, idle = storage.read_pool_stats()
    metrics.READ_POOL_SIZE.set(size)
    metrics.READ_POOL_IDLE.set(idle)


async def watch_read_pool(storage: Storage, interval: float) -> None:
    while True:
        try:
            await sample_read_pool(storage)
        except Exception as error:  # keep sampling whatever one sample hit
            log.warning("read pool sample failed: %s", type(error).__name__)
        await asyncio.sleep(interval)
