"""How much the Python load generator limits `transport`: the same health check
driven by h2load (nghttp2's compiled HTTP/2 load tool, Debian's nghttp2-client),
which speaks gRPC well enough for a unary call with an empty request: POST,
content-type application/grpc, a 5-byte frame (no compression, length 0).

It cannot chain a Commit to the Reserve it answers, so the pair contenders
stay on bench/loadgen.py and `transport_calls_per_s` (the figure the targets
use) is the one that load generator reaches; this figure says what the
servers do when the client costs almost nothing.
"""

from __future__ import annotations

import re
import resource
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from .infra import cpu_delta, cpu_seconds

EMPTY_GRPC_FRAME = b"\x00\x00\x00\x00\x00"


@dataclass
class H2loadResult:
    rate: float
    requests: int
    failed: int
    connections: int
    streams_per_connection: int
    cpu_cores: dict

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def available() -> bool:
    return shutil.which("h2load") is not None


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_h2load(addr: str, servers: list[psutil.Process], *, duration_s: float, warmup_s: float,
               connections: int = 4, streams: int = 16) -> H2loadResult:
    """grpc.health.v1.Health/Check on `addr` for warm-up + duration seconds, one h2load thread."""
    with tempfile.NamedTemporaryFile(suffix=".bin") as body:
        Path(body.name).write_bytes(EMPTY_GRPC_FRAME)
        argv = ["h2load", "-D", str(max(1, round(duration_s))), "--warm-up-time", str(max(0, round(warmup_s))),
                "-c", str(connections), "-m", str(streams), "-t", "1",
                "-H", "content-type: application/grpc", "-H", "te: trailers", "-d", body.name,
                f"http://{addr}/grpc.health.v1.Health/Check"]
        client_before = _children_cpu()
        servers_before = cpu_seconds(servers)
        started = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + warmup_s + 60)
        elapsed = time.monotonic() - started - max(0, round(warmup_s))
        servers_cpu = cpu_delta(servers_before, cpu_seconds(servers))
        client_cpu = _children_cpu() - client_before
    if proc.returncode != 0:
        raise RuntimeError(f"h2load failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    out = proc.stdout
    rate = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out).group(1))  # type: ignore[union-attr]
    counts = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", out)
    assert counts is not None, out
    # The servers' CPU covers warm-up too; per second of the whole run it is a fair share.
    whole = elapsed + max(0, round(warmup_s))
    return H2loadResult(rate=rate, requests=int(counts.group(1)), failed=int(counts.group(3)),
                        connections=connections, streams_per_connection=streams,
                        cpu_cores={"servers": round(servers_cpu / whole, 3),
                                   "loadgen": round(client_cpu / whole, 3)})
