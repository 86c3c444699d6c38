"""Ports for `make run`: is one free, who holds it, can it be connected to.

What holds a port is found from /proc (Linux: the listening socket's inode, then the process owning a file
descriptor on it) or, elsewhere, `lsof`; None when neither can tell (another user's process, say).
"""

from __future__ import annotations

import errno
import shutil
import socket
import subprocess
import time
from pathlib import Path

_PROC = Path("/proc")
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (_PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == _LISTEN and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(parts[9])
    return inodes


def _command(pid: str) -> str:
    try:
        raw = (_PROC / pid / "cmdline").read_bytes()
    except OSError:
        return "?"
    words = [w.decode(errors="replace") for w in raw.split(b"\0") if w]
    text = " ".join(" ".join([Path(words[0]).name, *words[1:]]).split()) if words else "?"  # one line
    return text if len(text) <= 80 else text[:77] + "..."


def holder(port: int) -> tuple[int, str] | None:
    """(pid, command line) of a process listening on TCP `port`, when it can be found."""
    inodes = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    if inodes:
        for proc in _PROC.iterdir():
            if not proc.name.isdigit():
                continue
            try:
                fds = list((proc / "fd").iterdir())
            except OSError:
                continue
            for fd in fds:
                try:
                    if str(fd.readlink()) in inodes:
                        return int(proc.name), _command(proc.name)
                except OSError:
                    continue
        return None
    if not _PROC.joinpath("net").exists() and shutil.which("lsof"):
        found = subprocess.run(["lsof", "-nP", f"-iTCP:{port}", "-sTCP:LISTEN", "-Fpc"],
                               capture_output=True, text=True, timeout=10).stdout.split()
        pid = next((f[1:] for f in found if f.startswith("p")), "")
        command = next((f[1:] for f in found if f.startswith("c")), "?")
        if pid.isdigit():
            return int(pid), command
    return None


def describe_holder(port: int) -> str:
    found = holder(port)
    return f"pid {found[0]} ({found[1]})" if found else "another process"


def bind_error(host: str, port: int, exc: OSError, variable: str) -> str:
    """Why `host:port` cannot be listened on, for a person: the port, what holds it, how to choose another."""
    if exc.errno == errno.EADDRINUSE:
        return (f"port {port} is already in use by {describe_holder(port)}; stop that or set {variable} "
                f"to a free port")
    return f"cannot listen on {host or '0.0.0.0'}:{port}: {exc.strerror or exc} (set {variable})"


def check_free(host: str, port: int) -> OSError | None:
    """None when `host:port` can be listened on now (bound and released at once), else why not."""
    host = host.strip("[]") or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc
    return None


def connect_host(host: str) -> str:
    """Where a client on this machine reaches a server listening on `host` (all interfaces: loopback)."""
    host = host.strip("[]")
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((connect_host(host), port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_closed(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while accepts(host, port, 0.2):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
