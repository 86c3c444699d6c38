"""The bench's own infrastructure: a fresh PostgreSQL database, server
processes started like production starts them, and what the OS says about
them (CPU time, peak resident memory)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psutil

from credit_service.embedded_db import EmbeddedPostgres, bin_path
from credit_service.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin(name: str) -> str:
    return bin_path(name)


@dataclass
class Database:
    """A fresh, migrated database: on DATABASE_URL's server if set, else an
    embedded PostgreSQL in a temporary directory (removed by close())."""

    url: str = ""
    embedded: EmbeddedPostgres | None = None
    tmp: Path | None = None
    created_name: str = ""
    base_url: str = ""

    @classmethod
    def create(cls) -> Database:
        base = os.environ.get("DATABASE_URL", "")
        if base:
            name = f"credit_bench_{uuid.uuid4().hex[:8]}"

            async def create_db() -> None:
                conn = await asyncpg.connect(base)
                try:
                    await conn.execute(f'CREATE DATABASE "{name}"')
                finally:
                    await conn.close()

            asyncio.run(create_db())
            db = cls(url=base.rsplit("/", 1)[0] + "/" + name, created_name=name, base_url=base)
        else:
            tmp = Path(tempfile.mkdtemp(prefix="credit-bench-pg-"))
            pg = EmbeddedPostgres(tmp / "pg", free_port()).start()
            db = cls(url=pg.url, embedded=pg, tmp=tmp)
        asyncio.run(migrate(db.url))
        return db

    def postgres_processes(self) -> list[psutil.Process]:
        """The postmaster and its children (backends, walwriter, …): embedded only."""
        if self.embedded is None:
            return []
        try:
            pid = int((self.embedded.pgdata / "postmaster.pid").read_text().split()[0])
            master = psutil.Process(pid)
            return [master, *master.children()]
        except (OSError, ValueError, psutil.Error):
            return []

    def close(self, keep: bool = False) -> None:
        if self.embedded is not None:
            try:
                self.embedded.stop("immediate")
            finally:
                if self.tmp is not None and not keep:
                    shutil.rmtree(self.tmp, ignore_errors=True)
        elif self.created_name and not keep:
            async def drop() -> None:
                conn = await asyncpg.connect(self.base_url)
                try:
                    await conn.execute(f'DROP DATABASE IF EXISTS "{self.created_name}" WITH (FORCE)')
                finally:
                    await conn.close()

            try:
                asyncio.run(drop())
            except Exception as exc:  # leave it; say so
                print(f"could not drop {self.created_name}: {exc}", file=sys.stderr)


@dataclass
class ServerProcess:
    """One server child process; ready when its log shows `ready_text`."""

    name: str
    argv: list[str]
    env: dict[str, str]
    ready_text: str = ""
    ready: Callable[[], bool] | None = None  # polled instead of ready_text when set
    proc: subprocess.Popen | None = None
    log_dir: Path | None = None  # default: the system's temporary directory
    log_path: Path = Path()
    peak_rss_mb: float = 0.0

    def start(self, timeout: float = 60) -> ServerProcess:
        fd, path = tempfile.mkstemp(prefix=f"{self.name}-", suffix=".log", dir=self.log_dir)
        os.close(fd)
        self.log_path = Path(path)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=log, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
            if self.ready is not None:
                if self.ready():
                    return self
            elif self.ready_text in self.log_path.read_text(errors="replace"):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def record_peak_rss(self) -> float:
        """VmHWM: the most resident memory the process ever had."""
        if self.proc is not None and self.proc.poll() is None:
            self.peak_rss_mb = max(self.peak_rss_mb, peak_rss_mb(self.proc.pid))
        return self.peak_rss_mb

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.record_peak_rss()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return 0.0


def cpu_seconds(processes: list[psutil.Process]) -> dict[int, float]:
    """user + system CPU seconds of each live process, by pid."""
    out: dict[int, float] = {}
    for p in processes:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def all_cpu_seconds() -> dict[int, tuple[str, float]]:
    """Every process's name and CPU seconds, by pid (to name what else ran in a window)."""
    out = {}
    for p in psutil.process_iter(["name", "cpu_times"]):
        t = p.info["cpu_times"]
        if t is not None:
            out[p.pid] = (p.info["name"] or "?", t.user + t.system)
    return out


def top_others(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], ours: set[int],
               window: float, n: int = 4) -> dict[str, float]:
    """The busiest processes in a window that are not ours, in cores, by name."""
    by_name: dict[str, float] = {}
    for pid, (name, cpu) in after.items():
        if pid in ours:
            continue
        spent = cpu - before[pid][1] if pid in before else 0.0
        if spent > 0:
            by_name[name] = by_name.get(name, 0.0) + spent / window
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:n]
    return {name: round(cores, 3) for name, cores in top if cores >= 0.01}


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine spent not idle (all cores), since boot."""
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0) + getattr(t, "steal", 0.0)
    return sum(t) - idle - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)  # guest is in user


def irq_cpu_seconds() -> float:
    """CPU seconds spent in interrupts and softirqs (loopback TCP, block I/O), which no process is charged."""
    t = psutil.cpu_times()
    return getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two samples by processes alive at both."""
    return sum(after[pid] - before[pid] for pid in after if pid in before)


def python_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENROUTER_API_KEY")}
    env.update(extra)
    return env


def python_argv(*args: str) -> list[str]:
    return [sys.executable, *args]
