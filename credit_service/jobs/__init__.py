"""The authority process's background jobs: sweeper.py (the hold-expiry sweeper and the hold and pool
gauges), alert_delivery.py (the low-balance alert worker: pool checks, signed webhook POSTs, retries),
replica_lag.py (the read pool's gauges: its server's replica lag, its connections).
serve() starts them with start_jobs() and stops them with Jobs.stop()."""

from __future__ import annotations

import asyncio

from ..settings import AlertSettings
from ..storage import Storage
from .alert_delivery import start_alert_worker
from .replica_lag import watch_read_pool
from .sweeper import Sweeper


class Jobs:
    """The running jobs' tasks."""

    def __init__(self, tasks: list[asyncio.Task]):
        self.tasks = tasks

    async def stop(self) -> None:
        """Cancels every job and waits for each to finish (before the pool they use is closed)."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def start_jobs(sweeper: Sweeper, database_url: str, storage: Storage, alerts: AlertSettings,
               read_lag_interval: float) -> Jobs:
    """Starts the sweeper, the read pool's gauges and (unless CREDIT_ALERTS_ENABLED=0) the alert worker on the
    running loop."""
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(sweeper.run(), name="sweeper"),
             loop.create_task(watch_read_pool(storage, read_lag_interval), name="read-pool-gauges")]
    alert_worker = start_alert_worker(database_url, storage, alerts)
    if alert_worker is not None:
        tasks.append(alert_worker)
    return Jobs(tasks)


__all__ = ["Jobs", "Sweeper", "start_jobs"]
