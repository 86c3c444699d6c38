"""The load generator every gRPC contender is measured with.

Several worker processes (multiprocessing, spawn), each running grpc.aio with
its share of the concurrent callers over its own TCP connections
(`grpc.use_local_subchannel_pool`: one connection per channel, so with
several server processes on one SO_REUSEPORT port the kernel spreads them).
All workers connect, report ready, then get one plan: warm up until
`t_from`, measure until `t_end` (CLOCK_MONOTONIC is system-wide, so every
process uses the same window). An operation counts when it completes inside
the window; its latency counts when it also started inside it. Each worker
reports its own CPU time over the window; the parent samples the servers'
and PostgreSQL's CPU time over the same window.

Workloads (one operation each):
  health — grpc.health.v1.Health/Check (no token, no database)
  pair   — CreditAuthority Reserve then Commit (generated credit.v1 stubs)
  naive  — /bench.NaiveBilling/Spend (check, no-op call, debit)
`call_ms` puts a simulated LLM call between Reserve and Commit (naive: between
its check and its debit, server-side, where the seed makes the call).
Burst mode (`burst` > 0) is the exhaustion scenario: every worker fires its
share of attempts at once, exactly once, and reports how each ended.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import os
import random
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import grpc
import psutil
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from credit.v1 import authority_pb2, authority_pb2_grpc

from .infra import all_cpu_seconds, busy_cpu_seconds, cpu_delta, cpu_seconds, irq_cpu_seconds, top_others
from .naive_server import SPEND

CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


@dataclass
class LoadSpec:
    workload: str  # health | pair | naive
    addr: str
    token: str = ""
    users: list[str] = field(default_factory=list)
    channels: int = 2  # TCP connections per worker process
    amount_mc: int = 1000  # Reserve amount (pair)
    charge_mc: int = 600  # Commit amount (pair), debit amount (naive)
    tag: str = "bench"  # request_id prefix, unique per run
    burst: int = 0  # > 0: exhaustion mode, attempts per worker
    call_ms: int = 0  # the simulated LLM call between Reserve and Commit (naive: inside the server)
    servers: int = 1  # server processes behind addr: > 1, and each worker balances its connections over them
    concurrency: int = 0  # callers of this worker (set by run_load)


@dataclass
class WorkerResult:
    ops: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)
    cpu_s: float = 0.0
    window_s: float = 0.0
    per_second: Counter = field(default_factory=Counter)  # completions by second of the window


def _struct(values: dict) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


# What the inference service sends, roughly: an estimate on Reserve, token counts on Commit.
RESERVE_METADATA = {"estimate_millicredits": 1000, "stream": False}
COMMIT_METADATA = {"provider": "openai", "model": "bench-chat", "prompt_tokens": 12, "completion_tokens": 40,
                   "total_tokens": 52}
ESTIMATED_TOKENS, TOKENS = 100, 52  # for tokens-per-minute limits (none apply outside authority_hot_limited)


def _operation(spec: LoadSpec, channel: grpc.aio.Channel, worker: int):
    """Returns an async callable doing one operation (raises AioRpcError on failure)."""
    auth = (("authorization", f"Bearer {spec.token}"),)
    users = spec.users
    pick = (lambda: users[0]) if len(users) == 1 else (lambda: random.choice(users))
    if spec.workload == "health":
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest()

        async def health_check() -> None:
            await stub.Check(request, timeout=30)
        return health_check
    if spec.workload == "pair":
        stub = authority_pb2_grpc.CreditAuthorityStub(channel)
        reserve_md, commit_md = _struct(RESERVE_METADATA), _struct(COMMIT_METADATA)
        seq = itertools.count()
        prefix = f"{spec.tag}-{worker}-{id(channel):x}-"
        charge = spec.charge_mc if not spec.burst else spec.amount_mc

        async def pair() -> None:
            hold = await stub.Reserve(authority_pb2.ReserveRequest(
                request_id=prefix + str(next(seq)), user_id=pick(), amount_millicredits=spec.amount_mc,
                service_type="llm_inference", service_name="bench-chat", metadata=reserve_md,
                estimated_tokens=ESTIMATED_TOKENS),
                metadata=auth, timeout=30)
            if spec.call_ms:
                await asyncio.sleep(spec.call_ms / 1000)
            await stub.Commit(authority_pb2.CommitRequest(
                reservation_id=hold.reservation_id, amount_millicredits=charge, metadata=commit_md, tokens=TOKENS),
                metadata=auth, timeout=30)
        return pair
    if spec.workload == "naive":
        spend_rpc = channel.unary_unary(SPEND, request_serializer=authority_pb2.ReserveRequest.SerializeToString,
                                        response_deserializer=authority_pb2.CommitResponse.FromString)
        usage_md = _struct(COMMIT_METADATA)
        amount = spec.charge_mc if not spec.burst else spec.amount_mc
        if spec.call_ms:
            auth = (*auth, ("x-call-ms", str(spec.call_ms)))

        async def spend() -> None:
            await spend_rpc(authority_pb2.ReserveRequest(
                user_id=pick(), amount_millicredits=amount, service_type="llm_inference",
                service_name="bench-chat", metadata=usage_md), metadata=auth, timeout=30)
        return spend
    raise ValueError(f"unknown workload {spec.workload!r}")


def _cpu_now() -> float:
    t = os.times()
    return t.user + t.system


async def _timed(spec: LoadSpec, operations: list, t_from: float, t_end: float) -> WorkerResult:
    result = WorkerResult()
    latencies = result.latencies

    async def caller(op) -> None:
        while True:
            t0 = time.monotonic()
            if t0 >= t_end:
                return
            try:
                await op()
            except grpc.aio.AioRpcError as error:
                result.errors[error.code().name] += 1
                await asyncio.sleep(0.01)
                continue
            t1 = time.monotonic()
            if t_from <= t1 <= t_end:
                result.ops += 1
                result.per_second[int(t1 - t_from)] += 1
                if t0 >= t_from:
                    latencies.append(t1 - t0)

    async def cpu_sampler() -> None:
        await asyncio.sleep(max(0.0, t_from - time.monotonic()))
        c0, w0 = _cpu_now(), time.monotonic()
        await asyncio.sleep(max(0.0, t_end - time.monotonic()))
        result.cpu_s, result.window_s = _cpu_now() - c0, time.monotonic() - w0

    await asyncio.gather(cpu_sampler(), *(caller(operations[i % len(operations)])
                                          for i in range(spec.concurrency)))
    return result


async def _burst(spec: LoadSpec, operations: list) -> WorkerResult:
    result = WorkerResult()

    async def attempt(op) -> None:
        try:
            await op()
            result.outcomes["granted"] += 1
        except grpc.aio.AioRpcError as error:
            code = error.code()
            result.outcomes["refused" if code == grpc.StatusCode.RESOURCE_EXHAUSTED else code.name] += 1

    await asyncio.gather(*(attempt(operations[i % len(operations)]) for i in range(spec.burst)))
    return result


async def _balanced_channels(spec: LoadSpec, conn) -> list[grpc.aio.Channel]:
    """Connections spread evenly over the server processes sharing the port.

    SO_REUSEPORT hashes each new connection to one of the listening processes;
    a handful of connections often lands unevenly, and then one process does
    most of the work. So connect one at a time, ask the parent which process
    accepted (it reads the sockets of both ends), keep the connection if that
    process still needs one, close it otherwise.
    """
    loop = asyncio.get_running_loop()
    per_server = max(1, spec.channels // spec.servers)
    have = [0] * spec.servers
    kept: list[grpc.aio.Channel] = []
    for _ in range(50 * spec.channels):
        if min(have) >= per_server:
            return kept
        channel = grpc.aio.insecure_channel(spec.addr, options=CHANNEL_OPTIONS)
        await asyncio.wait_for(channel.channel_ready(), 30)
        await loop.run_in_executor(None, conn.send, ("opened", None))
        server = await loop.run_in_executor(None, conn.recv)
        if server is not None and have[server] < per_server:
            have[server] += 1
            kept.append(channel)
        else:
            await channel.close()
    raise RuntimeError(f"could not balance connections over {spec.servers} server processes: {have}")


async def _worker(spec: LoadSpec, index: int, conn) -> WorkerResult:
    loop = asyncio.get_running_loop()
    channels: list[grpc.aio.Channel] = []
    try:
        if spec.servers > 1:
            channels = await _balanced_channels(spec, conn)
        else:
            channels = [grpc.aio.insecure_channel(spec.addr, options=CHANNEL_OPTIONS) for _ in range(spec.channels)]
            await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), 30)
        # One operation per connection before "ready", so no connection setup lands in the window.
        operations = [_operation(spec, c, index) for c in channels]
        if spec.workload == "health":
            await asyncio.gather(*(op() for op in operations))
        await loop.run_in_executor(None, conn.send, ("ready", os.getpid()))
        plan = await loop.run_in_executor(None, conn.recv)
        if spec.burst:
            return await _burst(spec, operations)
        return await _timed(spec, operations, *plan)
    finally:
        await asyncio.gather(*(c.close() for c in channels))


def _worker_main(spec: LoadSpec, index: int, conn) -> None:
    try:
        conn.send(("result", asyncio.run(_worker(spec, index, conn))))
    except BaseException:
        conn.send(("error", traceback.format_exc()))


@dataclass
class LoadResult:
    workload: str
    procs: int
    concurrency: int
    duration_s: float
    ops: int
    rate: float  # operations per second
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]
    outcomes: dict[str, int]
    cpu_cores: dict[str, float]  # loadgen, servers, postgres: CPU seconds per second of the window
    server_cores: list[float]  # each server process
    other_processes: dict[str, float]  # the busiest processes in the window that are not ours, in cores
    per_second: list[int]  # completions in each second of the window (drift shows here)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def _client_ports(pid: int, port: int) -> set[int]:
    return {c.laddr.port for c in psutil.Process(pid).net_connections("tcp")
            if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED}


def _accepting_server(worker_pid: int, port: int, servers: list[psutil.Process], known: set[int]) -> int | None:
    """Which server process accepted the worker's newest connection to `port`."""
    new = _client_ports(worker_pid, port) - known
    known |= new
    if len(new) != 1:
        return None
    (client_port,) = new
    for i, server in enumerate(servers):
        if any(c.raddr and c.raddr.port == client_port for c in server.net_connections("tcp")):
            return i
    return None


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def run_load(spec: LoadSpec, *, procs: int, concurrency: int, warmup: float = 0.0, duration: float = 0.0,
             servers: list[psutil.Process] = (),
             postgres: Callable[[], list[psutil.Process]] = list,
             announce: Callable[[float, float], None] | None = None) -> LoadResult:
    """Runs `spec` from `procs` worker processes with `concurrency` callers in all
    (or, in burst mode, spec.burst attempts in all) and merges their results."""
    ctx = multiprocessing.get_context("spawn")
    workers, pipes = [], []
    for i in range(procs):
        share = concurrency // procs + (1 if i < concurrency % procs else 0)
        burst = (spec.burst // procs + (1 if i < spec.burst % procs else 0)) if spec.burst else 0
        parent, child = ctx.Pipe()
        worker_spec = replace(spec, concurrency=share, burst=burst, servers=max(1, len(servers)))
        p = ctx.Process(target=_worker_main, args=(worker_spec, i, child), daemon=True)
        p.start()
        workers.append(p)
        pipes.append(parent)
    port = int(spec.addr.rsplit(":", 1)[1])
    try:
        for pipe, p in zip(pipes, workers, strict=True):
            known: set[int] = set()
            while True:
                if not pipe.poll(90):
                    raise RuntimeError("load worker did not get ready")
                kind, payload = pipe.recv()
                if kind == "opened":
                    pipe.send(_accepting_server(p.pid, port, servers, known))
                    continue
                if kind != "ready":
                    raise RuntimeError(f"load worker failed:\n{payload}")
                break
        t_from = time.monotonic() + warmup
        t_end = t_from + duration
        for pipe in pipes:
            pipe.send((t_from, t_end))
        if announce is not None and not spec.burst:
            now_wall, now_mono = time.time(), time.monotonic()
            announce(now_wall + (t_from - now_mono), now_wall + (t_end - now_mono))
        cpu_cores: dict[str, float] = {}
        server_cores: list[float] = []
        others: dict[str, float] = {}
        if not spec.burst:
            time.sleep(max(0.0, t_from - time.monotonic()))
            watched = {"servers": list(servers), "postgres": postgres()}  # backends as of the window's start
            before = {k: cpu_seconds(v) for k, v in watched.items()}
            everyone_before = all_cpu_seconds()
            busy_before, irq_before, w0 = busy_cpu_seconds(), irq_cpu_seconds(), time.monotonic()
            time.sleep(max(0.0, t_end - time.monotonic()))
            after = {k: cpu_seconds(v) for k, v in watched.items()}
            busy_after, irq_after, window = busy_cpu_seconds(), irq_cpu_seconds(), time.monotonic() - w0
            ours = {p.pid for p in workers} | set(after["servers"]) | set(after["postgres"]) | {os.getpid()}
            others = top_others(everyone_before, all_cpu_seconds(), ours, window)
            cpu_cores = {k: cpu_delta(before[k], after[k]) / window for k in watched}
            cpu_cores["machine"] = (busy_after - busy_before) / window
            cpu_cores["irq"] = (irq_after - irq_before) / window
            server_cores = [round((after["servers"].get(p.pid, 0) - before["servers"].get(p.pid, 0)) / window, 3)
                            for p in servers]
        results: list[WorkerResult] = []
        for pipe in pipes:
            if not pipe.poll(duration + 120):
                raise RuntimeError("load worker did not report")
            kind, payload = pipe.recv()
            if kind != "result":
                raise RuntimeError(f"load worker failed:\n{payload}")
            results.append(payload)
    finally:
        for p in workers:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    latencies = sorted(itertools.chain.from_iterable(r.latencies for r in results))
    errors: Counter = sum((r.errors for r in results), Counter())
    outcomes: Counter = sum((r.outcomes for r in results), Counter())
    ops = sum(r.ops for r in results)
    per_second: Counter = sum((r.per_second for r in results), Counter())
    if not spec.burst:
        cpu_cores["loadgen"] = sum(r.cpu_s / r.window_s for r in results if r.window_s > 0)
        # Whatever else ran on the machine in the window (other people's work, the kernel): noise.
        cpu_cores["other"] = max(0.0, cpu_cores["machine"] - cpu_cores["loadgen"] - cpu_cores["servers"]
                                 - cpu_cores["postgres"] - cpu_cores["irq"])
    return LoadResult(
        workload=spec.workload, procs=procs, concurrency=concurrency if not spec.burst else spec.burst,
        duration_s=duration, ops=ops, rate=ops / duration if duration else 0.0,
        p50_ms=percentile(latencies, 0.50) * 1000, p99_ms=percentile(latencies, 0.99) * 1000,
        errors=dict(errors), outcomes=dict(outcomes), cpu_cores={k: round(v, 3) for k, v in cpu_cores.items()},
        server_cores=server_cores, other_processes=others,
        per_second=[per_second.get(i, 0) for i in range(int(duration))])
