"""`make run`'s entry point (`python -m credit_service up`) as a person meets it, run as a subprocess with
a private data directory and free ports:

* a taken port (the REST service's, the authority's, the embedded PostgreSQL's) ends the run at once, exit 1,
  naming the port and the process that holds it, before anything is started; the same event as a readable
  line (LOG_FORMAT=text) and as JSON (LOG_FORMAT=json);
* the REST service alone on a taken port exits 2 naming it and never says "listening";
* the REST child killed: `up` notices, stops the authority and PostgreSQL, exits 1;
* Ctrl-C typed on a terminal (progress lines and readable log lines there): no process of the stack and no
  PostgreSQL left (by pid and by port), the services stopped one by one, each exiting 0;
  `python -m credit_service stop` (make stop) stops a running `up` and, when CREDIT_EMBEDDED_PG_KEEP=1 left
  it running, PostgreSQL.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, free_port

from credit_service.embedded_db import EmbeddedPostgres

EXIT_TIMEOUT = 60  # generous: the assertions are on exit codes and messages, not on time


class Run:
    """One `python -m credit_service up`, its output collected line by line (stdout and stderr)."""

    started: list[Run] = []  # killed after each test if still running (a failed test leaves nothing behind)

    def __init__(self, data_dir: Path, ports: dict[str, int], terminal: bool = False, **extra: str) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CREDIT_AUTH_TOKENS")}
        env.update(CREDIT_DATA_DIR=str(data_dir), CREDIT_LISTEN_ADDR=f"127.0.0.1:{ports['authority']}",
                   CREDIT_EMBEDDED_PG_PORT=str(ports["pg"]), INFERENCE_PORT=str(ports["rest"]),
                   INFERENCE_HOST="127.0.0.1", CREDIT_METRICS_PORT=str(ports["metrics"]), LOG_FORMAT="json")
        env.update(extra)
        self.ports = ports
        self.lines: list[str] = []
        self.terminal: int | None = None
        argv = [sys.executable, "-m", "credit_service", "up"]
        if terminal:  # a pseudo-terminal, `up` its session leader and foreground process group, as in a shell
            env["LOG_FORMAT"] = "auto"
            self.terminal, follower = pty.openpty()
            self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdin=follower, stdout=follower, stderr=follower,
                                         start_new_session=True,
                                         preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
            os.close(follower)
        else:
            self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        Run.started.append(self)

    def _read(self) -> None:
        if self.terminal is None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line)
            return
        pending = b""
        while True:
            try:
                data = os.read(self.terminal, 65536)
            except OSError:  # EIO: every process holding the terminal is gone
                data = b""
            if not data:
                break
            *done, pending = (pending + data).split(b"\n")
            self.lines += [line.decode(errors="replace").rstrip("\r") + "\n" for line in done]
        if pending:
            self.lines.append(pending.decode(errors="replace"))

    def type_ctrl_c(self) -> None:
        assert self.terminal is not None
        os.write(self.terminal, b"\x03")  # the terminal sends SIGINT to its foreground process group

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_up(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not any(line.startswith("Ctrl-C stops") for line in self.lines):
            assert self.proc.poll() is None, f"up exited {self.proc.returncode}:\n{self.output}"
            assert time.monotonic() < deadline, f"not up within {timeout} s:\n{self.output}"
            time.sleep(0.1)

    def wait(self) -> int:
        code = self.proc.wait(EXIT_TIMEOUT)
        self._reader.join(10)
        if self.terminal is not None:
            os.close(self.terminal)
        return code

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.lines if line.startswith("{")]

    def child_pid(self, name: str) -> int:
        if self.terminal is not None:  # from the progress line
            return int(re.search(rf"✓ {name} on port \d+: up, pid (\d+)", self.output).group(1))
        return next(e["pid"] for e in self.events() if e.get("msg") == f"{name} started")


def _ports() -> dict[str, int]:
    return {"authority": free_port(), "rest": free_port(), "pg": free_port(), "metrics": free_port()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) is not running
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _assert_gone(pids: dict[str, int], ports: dict[str, int], output: str) -> None:
    left = {name: pid for name, pid in pids.items() if _alive(pid)}
    assert not left, f"still running: {left}\n{output}"
    listening = {name: port for name, port in ports.items() if _listening(port)}
    assert not listening, f"still listening: {listening}\n{output}"


@pytest.fixture(autouse=True)
def _kill_left_over_runs() -> Iterator[None]:
    yield
    while Run.started:
        proc = Run.started.pop().proc
        if proc.poll() is None:
            proc.kill()  # its services get SIGTERM from the kernel (PR_SET_PDEATHSIG)
            proc.wait()


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    """One data directory for the module's full starts: the cluster is created and migrated once."""
    path = Path(tempfile.mkdtemp(prefix="credit-make-run-"))
    yield path
    EmbeddedPostgres(path / "pg", 0).stop("immediate")


@pytest.fixture
def holder() -> Iterator[tuple[subprocess.Popen, int]]:
    """Another process listening on a free port (what a person would have left running)."""
    proc = subprocess.Popen([sys.executable, "-c",
                             "import socket, sys, time\n"
                             "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
                             "print(s.getsockname()[1], flush=True); time.sleep(600)"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    yield proc, port
    proc.kill()
    proc.wait()


NAMES = {"rest": "REST service", "authority": "credit authority", "pg": "embedded PostgreSQL"}
VARIABLES = {"rest": "INFERENCE_PORT", "authority": "CREDIT_LISTEN_ADDR", "pg": "CREDIT_EMBEDDED_PG_PORT"}


@pytest.mark.parametrize(("taken", "log_format"), [("rest", "json"), ("rest", "text"), ("authority", "json"),
                                                   ("pg", "text")])
def test_a_taken_port_ends_up_at_once_naming_the_port_and_its_holder(holder, taken, log_format):
    proc, port = holder
    data_dir = Path(tempfile.mkdtemp(prefix="credit-make-run-port-"))
    ports = {**_ports(), taken: port}
    run = Run(data_dir, ports, LOG_FORMAT=log_format)
    assert run.wait() == 1, run.output
    expected = (f"the {NAMES[taken]} cannot start: port {port} is already in use by pid {proc.pid} "
                f"(python")
    if log_format == "json":
        errors = [e for e in run.events() if e["level"] == "error"]
        assert len(errors) == 1, run.output
        assert errors[0]["msg"].startswith(expected) and VARIABLES[taken] in errors[0]["msg"], run.output
        assert (errors[0]["logger"], errors[0]["service"], errors[0]["port"]) == ("up", "up", port)
    else:
        assert not any(line.startswith("{") for line in run.lines), run.output
        line = next(line for line in run.lines if " ERROR " in line)
        assert re.match(r"\d\d:\d\d:\d\d ERROR +up +" + re.escape(expected), line), line
        assert line.rstrip().endswith(f"port={port}"), line
    assert "listening" not in run.output and "Ctrl-C" not in run.output
    assert not (data_dir / "pg").exists(), "nothing may start before every port is checked"


def test_the_rest_service_on_a_taken_port_exits_naming_it_without_saying_listening(holder):
    proc, port = holder
    env = {**os.environ, "INFERENCE_HOST": "127.0.0.1", "INFERENCE_PORT": str(port),
           "CREDIT_SERVICE_TOKEN": "t" * 32, "LOG_FORMAT": "json"}
    result = subprocess.run([sys.executable, "-m", "inference_service"], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=EXIT_TIMEOUT)
    assert result.returncode == 2, result.stderr
    assert "listening" not in result.stdout
    error = json.loads(result.stderr.strip().splitlines()[-1])
    assert error["port"] == port and error["service"] == "rest"
    assert f"port {port} is already in use by pid {proc.pid}" in error["msg"], error


def test_a_dead_rest_service_stops_the_authority_and_postgres(data_dir):
    ports = _ports()
    run = Run(data_dir, ports)
    try:
        run.wait_up()
        pg = EmbeddedPostgres(data_dir / "pg", ports["pg"]).postmaster()
        assert pg is not None and pg[1] == ports["pg"]
        pids = {"authority": run.child_pid("credit authority"), "rest": run.child_pid("REST service"),
                "postgres": pg[0]}
        os.kill(pids["rest"], signal.SIGKILL)
        assert run.wait() == 1, run.output
    finally:
        run.proc.kill()
    error = next(e for e in run.events() if e["level"] == "error")
    assert f"the REST service (pid {pids['rest']}) was killed by signal SIGKILL" in error["msg"], run.output
    _assert_gone(pids, ports, run.output)


def test_sighup_a_closed_terminal_stops_everything_postgres_included(data_dir):
    """Closing the terminal sends up SIGHUP: it stops the services and the embedded PostgreSQL as on SIGTERM
    (and its progress lines, which can no longer be written there, do not stop it: tests/unit/test_supervise.py)."""
    ports = _ports()
    run = Run(data_dir, ports, INFERENCE_ENABLED="0")
    try:
        run.wait_up()
        pg = EmbeddedPostgres(data_dir / "pg", ports["pg"]).postmaster()
        assert pg is not None
        pids = {"authority": run.child_pid("credit authority"), "postgres": pg[0], "up": run.proc.pid}
        os.kill(run.proc.pid, signal.SIGHUP)
        assert run.wait() == 0, run.output
    finally:
        run.proc.kill()
    _assert_gone(pids, ports, run.output)


def test_make_stop_and_ctrl_c_leave_nothing_running(data_dir):
    # CREDIT_EMBEDDED_PG_KEEP=1: `up` stopped by `credit_service stop` (make stop, from another terminal)
    # leaves PostgreSQL running, which that stop then stops. (The REST service: in the terminal run below.)
    ports = _ports()
    run = Run(data_dir, ports, CREDIT_EMBEDDED_PG_KEEP="1", INFERENCE_ENABLED="0")
    run.wait_up()
    pg = EmbeddedPostgres(data_dir / "pg", ports["pg"]).postmaster()
    assert pg is not None
    services = {"authority": run.child_pid("credit authority"), "up": run.proc.pid}
    env = {**os.environ, "CREDIT_DATA_DIR": str(data_dir), "CREDIT_EMBEDDED_PG_PORT": str(ports["pg"])}
    stop = subprocess.run([sys.executable, "-m", "credit_service", "stop"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=EXIT_TIMEOUT)
    assert run.wait() == 0, run.output
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert f"stopping make run (pid {run.proc.pid})" in stop.stdout, stop.stdout
    assert any(e["msg"].startswith("embedded PostgreSQL left running") for e in run.events()), run.output
    assert f"stopping the embedded PostgreSQL under {data_dir / 'pg'} (pid {pg[0]}" in stop.stdout, stop.stdout
    _assert_gone({**services, "postgres": pg[0]}, ports, run.output + stop.stdout)

    # Without the option, on a terminal (progress, readable lines), Ctrl-C: PostgreSQL stops too.
    run = Run(data_dir, ports, terminal=True)
    run.wait_up()
    pg = EmbeddedPostgres(data_dir / "pg", ports["pg"]).postmaster()
    assert pg is not None
    progress = "".join(run.lines)
    assert re.search(r"✓ migrations: up to date \(\d+\.\d s\)", progress), progress
    assert not any(line.startswith("{") for line in run.lines), "a terminal gets readable lines, not JSON"
    pids = {"authority": run.child_pid("credit authority"), "rest": run.child_pid("REST service"),
            "postgres": pg[0], "up": run.proc.pid}
    run.type_ctrl_c()
    assert run.wait() == 0, run.output
    _assert_gone(pids, ports, run.output)
    for name in ("REST service", "credit authority"):  # each stopped by up, cleanly, the REST service first
        assert re.search(rf"✓ {name} stopped \(pid {pids['rest' if name == 'REST service' else 'authority']}, "
                         r"exit code 0,", run.output), run.output
    assert run.output.index("✓ REST service stopped") < run.output.index("✓ credit authority stopped")
    assert "✓ stopping PostgreSQL" in run.output
