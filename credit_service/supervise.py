"""`up`'s process supervision: the authority and the REST service as child processes, each started, waited
for until its port accepts connections, then watched. A child that fails to start or dies is named with
its exit status (and, when its port is held by someone else, by whom); the others are then stopped.
SIGINT, SIGTERM and SIGHUP (the terminal closed) stop every child in order (the REST service first, it calls
the authority); the children run in their own process group, so a Ctrl-C on the terminal reaches `up` only.

Start-up progress (`Progress`) goes to the terminal only: nothing when stdout is not one or CREDIT_QUIET=1.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from . import ports

log = logging.getLogger("up")


@dataclass
class Outcome:
    done: str


class Progress:
    """Named steps with their durations, for a person watching the terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def line(self, text: str) -> None:
        if self.enabled:
            try:
                print(text, flush=True)
            except OSError:  # the terminal is gone (closed: SIGHUP, then EIO); the stop it reports goes on
                self.enabled = False

    @contextlib.contextmanager
    def step(self, name: str, done: str = "done") -> Iterator[Outcome]:
        """Says `name` starts, then that it is done (or what the body set `outcome.done` to), with its time."""
        self.line(f"▸ {name} …")
        started = time.monotonic()
        outcome = Outcome(done)
        try:
            yield outcome
        except BaseException:
            self.line(f"✗ {name}: failed after {time.monotonic() - started:.1f} s")
            raise
        self.line(f"✓ {name}: {outcome.done} ({time.monotonic() - started:.1f} s)")


class Stopped(Exception):
    """SIGINT, SIGTERM or SIGHUP arrived: stop everything, exit 0."""


class Failed(Exception):
    """A part of the stack could not start or died: stop everything, exit 1."""


@dataclass
class Child:
    """One service process and the port that says it is up."""

    name: str  # as printed: "credit authority", "REST service"
    argv: list[str]
    env: dict[str, str]
    host: str
    port: int
    variable: str  # the setting that chooses the port
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def why_dead(self, returncode: int) -> str:
        """The exit status, and who holds the child's port if someone else does."""
        status = f"was killed by signal {signal.Signals(-returncode).name}" if returncode < 0 \
            else f"exited with code {returncode}"
        found = ports.holder(self.port)
        if found and found[0] != self.pid:
            status += f"; port {self.port} is held by pid {found[0]} ({found[1]}), set {self.variable}"
        return status


def _die_with_parent() -> None:
    """In the child: SIGTERM when `up` itself dies, even by SIGKILL (Linux), so no service outlives it."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Supervisor:
    """Starts children in order, watches them, stops them; turns SIGINT/SIGTERM/SIGHUP into Stopped."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.children: list[Child] = []
        self.signal: int | None = None
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: its terminal was closed
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signal = signum

    def check_signal(self) -> None:
        if self.signal is not None:
            raise Stopped(signal.Signals(self.signal).name)

    def start(self, child: Child, timeout: float = 120) -> None:
        """Starts `child` and waits until its port accepts connections (Failed if it dies or never does)."""
        self.progress.line(f"▸ {child.name} on port {child.port} …")
        started = time.monotonic()
        # Its own process group: a Ctrl-C reaches `up` alone, which then stops the children one by one, each
        # with one SIGTERM (two signals racing a shutdown could end a child killed by the second).
        child.proc = subprocess.Popen(child.argv, env=child.env, process_group=0, preexec_fn=_die_with_parent)
        self.children.append(child)
        log.log(logging.DEBUG if self.progress.enabled else logging.INFO, "%s started", child.name,
                extra={"pid": child.pid, "port": child.port})
        while not ports.accepts(child.host, child.port, 0.2):
            self.check_signal()
            returncode = child.proc.poll()
            if returncode is not None:
                raise Failed(f"the {child.name} did not start: it {child.why_dead(returncode)}",
                             {"port": child.port, "exit_code": returncode})
            if time.monotonic() - started > timeout:
                raise Failed(f"the {child.name} did not listen on port {child.port} within {timeout:.0f} s",
                             {"port": child.port})
            time.sleep(0.1)
        self.progress.line(f"✓ {child.name} on port {child.port}: up, pid {child.pid} "
                           f"({time.monotonic() - started:.1f} s)")

    def watch(self) -> None:
        """Returns never: Stopped on a signal, Failed when a child exits."""
        while True:
            self.check_signal()
            for child in self.children:
                assert child.proc is not None
                returncode = child.proc.poll()
                if returncode is not None:
                    raise Failed(f"the {child.name} (pid {child.pid}) {child.why_dead(returncode)}",
                                 {"pid": child.pid, "exit_code": returncode})
            time.sleep(0.2)

    def stop_all(self, timeout: float = 20) -> None:
        """Stops the children, the last started first: SIGTERM, then SIGKILL after `timeout`."""
        for child in reversed(self.children):
            proc = child.proc
            assert proc is not None
            started = time.monotonic()
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop within %.0f s: killed", child.name, timeout,
                                extra={"pid": child.pid})
                    proc.kill()
                    proc.wait()
            self.progress.line(f"✓ {child.name} stopped (pid {child.pid}, exit code {proc.returncode}, "
                               f"{time.monotonic() - started:.1f} s)")
            log.log(logging.DEBUG if self.progress.enabled else logging.INFO, "%s stopped", child.name,
                    extra={"pid": child.pid, "exit_code": proc.returncode})
