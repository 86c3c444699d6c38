"""`python -m credit_service up` (make run) and `stop` (make stop).

up: every port checked first (a taken one ends the run at once, naming the port and what holds it), then
the embedded PostgreSQL (when DATABASE_URL is unset), migrations, the demo seed, the authority and the REST
service as supervised child processes, then the banner. It returns 0 after SIGINT/SIGTERM/SIGHUP, 1 when a part
failed to start or died; either way everything it started is stopped, the embedded PostgreSQL included
unless CREDIT_EMBEDDED_PG_KEEP=1 (a server that was already running is left as it was).

stop: ends a running `up` of this data directory (its pid is in `up.pid`), then the embedded PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from inference_service.settings import Settings as InferenceSettings

from . import ports
from .authority import CreditAuthority
from .demo import banner, ensure_tokens, seed
from .embedded_db import EmbeddedPostgres
from .migrate import migrate
from .settings import DATA_DIR, OutputSettings, Settings, child_environment
from .storage import Storage
from .supervise import Child, Failed, Progress, Stopped, Supervisor

log = logging.getLogger("up")


def _host_port(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def _preflight(settings: Settings, rest: InferenceSettings | None, pg: EmbeddedPostgres | None) -> None:
    """Failed naming the first port that cannot be listened on (before anything is started)."""
    wanted = [("credit authority", *_host_port(settings.listen_addr), "CREDIT_LISTEN_ADDR")]
    if settings.metrics_port:
        wanted.append(("authority metrics", settings.metrics_host, settings.metrics_port, "CREDIT_METRICS_PORT"))
    if rest is not None:
        wanted.append(("REST service", rest.host, rest.port, "INFERENCE_PORT"))
    if pg is not None:
        running = pg.postmaster()
        if running is None:
            wanted.append(("embedded PostgreSQL", "127.0.0.1", pg.port, "CREDIT_EMBEDDED_PG_PORT"))
        elif running[1] != pg.port:
            raise Failed(f"the embedded PostgreSQL under {pg.pgdata} is already running on port {running[1]} "
                         f"(pid {running[0]}), not on CREDIT_EMBEDDED_PG_PORT={pg.port}: `make stop` stops it")
    for name, host, port, variable in wanted:
        error = ports.check_free(host, port)
        if error is not None:
            raise Failed(f"the {name} cannot start: {ports.bind_error(host, port, error, variable)}",
                         {"port": port})


async def _seed(url: str, settings: Settings, tokens: dict[str, str]) -> dict[str, str]:
    storage = await Storage.connect(url, 1, 2)
    try:
        port = _host_port(settings.listen_addr)[1]
        return await seed(CreditAuthority(storage), settings.data_dir / "demo.env", tokens, f"127.0.0.1:{port}")
    finally:
        await storage.close()


def _database(settings: Settings, pg: EmbeddedPostgres | None, progress: Progress) -> str:
    if pg is None:
        return settings.database_url
    first = not pg.initialized
    name = "embedded PostgreSQL" + (f" (first run: new cluster in {pg.pgdata})" if first else "")
    with progress.step(f"{name} on 127.0.0.1:{pg.port}", "ready"):
        pg.start()
    if pg.started and not progress.enabled:
        log.info("embedded PostgreSQL started", extra={"port": pg.port, "pgdata": str(pg.pgdata)})
    return pg.url


def _children(settings: Settings, rest: InferenceSettings | None, url: str, env: dict[str, str],
              token_file: str) -> list[Child]:
    python = [sys.executable, "-m"]
    host, port = _host_port(settings.listen_addr)
    children = [Child("credit authority", [*python, "credit_service", "serve"],
                      child_environment(DATABASE_URL=url, CREDIT_MIGRATE_ON_START="0",
                                        CREDIT_AUTH_TOKENS_FILE=token_file,
                                        CREDIT_DATA_DIR=str(settings.data_dir)),
                      host, port, "CREDIT_LISTEN_ADDR")]
    if rest is not None:
        children.append(Child("REST service", [*python, "inference_service"],
                              child_environment(CREDIT_SERVICE_TOKEN=env["CREDIT_SERVICE_TOKEN"],
                                                CREDIT_AUTHORITY_ADDR=env["CREDIT_AUTHORITY_ADDR"],
                                                CREDIT_DATA_DIR=str(settings.data_dir)),
                              rest.host, rest.port, "INFERENCE_PORT"))
    return children


def _stop_line(settings: Settings, pg: EmbeddedPostgres | None) -> str:
    if pg is None:
        return "Ctrl-C stops everything (the database is DATABASE_URL's, left alone)."
    if not pg.started:
        return ("Ctrl-C stops the services; PostgreSQL was already running before and stays so "
                "(`make stop` stops it).")
    if settings.keep_embedded_pg:
        return "Ctrl-C stops everything but PostgreSQL (CREDIT_EMBEDDED_PG_KEEP=1; `make stop` stops it)."
    return "Ctrl-C stops everything, PostgreSQL included (CREDIT_EMBEDDED_PG_KEEP=1 keeps it running between runs)."


def _print_banner(settings: Settings, rest: InferenceSettings | None, env: dict[str, str],
                  pg: EmbeddedPostgres | None) -> None:
    sso = ""
    if rest is not None and rest.sso.enabled:
        sso = rest.sso.provider_name or rest.sso.issuer.split("//", 1)[-1].split("/", 1)[0]
    prefix = "" if settings.data_dir == DATA_DIR else f"CREDIT_DATA_DIR={settings.data_dir} "
    print("\n" + banner(env, settings.data_dir / "demo.env", (rest.host, rest.port) if rest else None,
                        (settings.metrics_host, settings.metrics_port), sso, _stop_line(settings, pg), prefix),
          flush=True)


def _start(settings: Settings, rest: InferenceSettings | None, pg: EmbeddedPostgres | None,
           supervisor: Supervisor) -> None:
    """Everything up to the banner; Failed or Stopped on the way."""
    progress = supervisor.progress
    token_file = settings.data_dir / "auth_tokens"
    tokens = ensure_tokens(token_file)
    url = _database(settings, pg, progress)
    supervisor.check_signal()
    with progress.step("migrations") as outcome:
        applied = asyncio.run(migrate(url))
        outcome.done = f"{len(applied)} applied" if applied else "up to date"
    if applied:
        log.log(logging.DEBUG if progress.enabled else logging.INFO, "applied migrations: %s",
                ", ".join(applied), extra={"count": len(applied)})
    supervisor.check_signal()
    with progress.step("demo seed (demo-org, demo-user, solo-user, API keys)"):
        env = asyncio.run(_seed(url, settings, tokens))
    for child in _children(settings, rest, url, env, settings.auth_tokens_file or str(token_file)):
        supervisor.check_signal()
        supervisor.start(child)
    _print_banner(settings, rest, env, pg)


def _finish(settings: Settings, pg: EmbeddedPostgres | None, supervisor: Supervisor) -> None:
    supervisor.stop_all()
    if pg is None or not pg.started:
        return
    if settings.keep_embedded_pg:
        log.info("embedded PostgreSQL left running (CREDIT_EMBEDDED_PG_KEEP=1; make stop stops it)",
                 extra={"port": pg.port})
        return
    with supervisor.progress.step(f"stopping PostgreSQL on 127.0.0.1:{pg.port}"):
        pg.stop()
    if not supervisor.progress.enabled:
        log.info("embedded PostgreSQL stopped", extra={"port": pg.port})


def up(settings: Settings) -> int:
    """The whole stack until SIGINT/SIGTERM/SIGHUP (0) or a failure (1)."""
    progress = Progress(sys.stdout.isatty() and not OutputSettings.from_env().quiet)
    supervisor = Supervisor(progress)
    rest = InferenceSettings.from_env() if settings.start_inference else None
    pg = None if settings.database_url else EmbeddedPostgres(settings.data_dir / "pg", settings.embedded_pg_port)
    pid_file = settings.data_dir / "up.pid"
    code = 0
    try:
        _preflight(settings, rest, pg)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{os.getpid()}\n")
        _start(settings, rest, pg, supervisor)
        supervisor.watch()
    except Stopped as stop:
        progress.line("")
        log.info("%s: stopping everything make run started", stop.args[0])
    except Failed as failure:
        extra = failure.args[1] if len(failure.args) > 1 else {}
        started = supervisor.children or (pg is not None and pg.started)
        log.error("%s; %s", failure.args[0], "stopping everything make run started" if started
                  else "nothing was started", extra=extra)
        code = 1
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:  # PostgreSQL or the database refused
        log.error("make run failed: %s", exc)
        code = 1
    finally:
        _finish(settings, pg, supervisor)
        if pid_file.exists() and pid_file.read_text().strip() == str(os.getpid()):
            pid_file.unlink()
    return code


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie, ended but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:  # no /proc (not Linux): kill() said it exists
        return True


def _up_pid(data_dir: Path) -> int | None:
    """The pid of a running `up` of this data directory, if any."""
    try:
        pid = int((data_dir / "up.pid").read_text().strip())
        command = Path(f"/proc/{pid}/cmdline").read_bytes() if Path("/proc").exists() else b"credit_service"
    except (OSError, ValueError):
        return None
    return pid if b"credit_service" in command else None


def stop(settings: Settings) -> int:
    """Stops a running `up` of this data directory, then its embedded PostgreSQL; 0 when nothing is left."""
    pid = _up_pid(settings.data_dir)
    if pid is not None:
        print(f"stopping make run (pid {pid})", flush=True)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    pg = EmbeddedPostgres(settings.data_dir / "pg", settings.embedded_pg_port)
    running = pg.postmaster() if pg.initialized else None
    if running is None:
        print(f"no embedded PostgreSQL running under {pg.pgdata}")
        return 0
    print(f"stopping the embedded PostgreSQL under {pg.pgdata} (pid {running[0]}, port {running[1]})", flush=True)
    pg.stop()
    return 0
