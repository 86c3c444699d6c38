"""One bench run: a fresh database, the servers, every contender in turn
with the same load generator, the table, bench/results.json."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

from . import h2load, inference, report, seeding
from .infra import (
    Database,
    ServerProcess,
    all_cpu_seconds,
    busy_cpu_seconds,
    free_port,
    python_argv,
    python_env,
    top_others,
)
from .loadgen import LoadResult, LoadSpec, run_load
from .pgbench import run_pgbench

HERE = Path(__file__).resolve().parent
IDLE_CORES = 0.3  # busier than this before a contender, and the machine is not ours alone
CONTENDERS = ("transport", "authority_hot", "authority_hot_limited", "authority_spread", "exhaustion", "inference",
              "naive", "pgbench")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="smoke run: ~1-2 s per contender, 100 spread users")
    p.add_argument("--duration", type=float, help="measured seconds per contender (default 8, quick 1.5)")
    p.add_argument("--warmup", type=float, help="warm-up seconds before each window (default 2, quick 0.5)")
    p.add_argument("--concurrency", type=int, default=64, help="concurrent callers in all (default 64)")
    p.add_argument("--load-procs", default="auto",
                   help="load generator processes for every contender after transport (default auto: the count "
                        "that gave the best transport figure)")
    p.add_argument("--channels", type=int, default=2, help="TCP connections per load process (default 2)")
    p.add_argument("--transport-scan", default=None,
                   help="load process counts to measure transport with (default 1,2,3; quick 1,2)")
    p.add_argument("--authority-procs", type=int, default=2,
                   help="authority (and naive server) processes sharing one port (default 2)")
    p.add_argument("--db-pool", type=int, default=16, help="database pool size per server process (default 16)")
    p.add_argument("--spread-users", type=int, help="users of authority_spread (default 1000, quick 100)")
    p.add_argument("--spread-orgs", type=int, default=10)
    p.add_argument("--exhaust-k", type=int, default=100, help="calls the exhaustion allocation fits")
    p.add_argument("--exhaust-attempts", type=int, default=500, help="concurrent attempts against it")
    p.add_argument("--pgbench-clients", type=int, default=64)
    p.add_argument("--pgbench-threads", type=int, default=2)
    p.add_argument("--inference-calls", type=int, help="sequential calls (default 300, quick 40)")
    p.add_argument("--authority-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment of the authority processes, e.g. CREDIT_ACCESS_LOG=0 (repeatable)")
    p.add_argument("--only", default="", help=f"comma list of contenders to run: {','.join(CONTENDERS)}")
    p.add_argument("--output", type=Path, help="default bench/results.json; quick: bench/results-quick.json; "
                                                  "--only or non-default servers or callers: "
                                                  "bench/results-partial.json")
    p.add_argument("--wait-idle", type=float,
                   help="before each contender, wait up to this many seconds for other work on the machine to "
                        "stop (default 30, quick 3; 0: do not wait)")
    p.add_argument("--keep-db", action="store_true", help="leave the database behind")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    args = p.parse_args(argv)
    q = args.quick
    args.duration = args.duration if args.duration is not None else (1.5 if q else 8.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if q else 2.0)
    args.wait_idle = args.wait_idle if args.wait_idle is not None else (3.0 if q else 30.0)
    args.spread_users = args.spread_users or (100 if q else 1000)
    args.inference_calls = args.inference_calls or (40 if q else 300)
    scan = args.transport_scan or ("1,2" if q else "1,2,3")
    args.transport_scan = sorted({int(x) for x in scan.split(",") if x.strip()})
    if args.load_procs != "auto":
        try:
            args.load_procs = int(args.load_procs)
        except ValueError:
            p.error("--load-procs takes a number or auto")
    args.only = {x.strip() for x in args.only.split(",") if x.strip()} or set(CONTENDERS)
    unknown = args.only - set(CONTENDERS)
    if unknown:
        p.error(f"unknown contenders: {', '.join(sorted(unknown))}")
    try:
        args.authority_env = dict(item.split("=", 1) for item in args.authority_env)
    except ValueError:
        p.error("--authority-env takes NAME=VALUE")
    # Only a full run of every contender with the shipped settings replaces results.json.
    partial = (args.only != set(CONTENDERS) or bool(args.authority_env)
               or any(getattr(args, name) != p.get_default(name) for name in ("authority_procs", "db_pool",
                                                                              "concurrency")))
    args.output = args.output or HERE / ("results-quick.json" if q else "results-partial.json" if partial
                                         else "results.json")
    return args


def machine_idle_check(seconds: float = 1.0) -> dict:
    """How busy the machine is before we start, and with what."""
    everyone, busy, t0 = all_cpu_seconds(), busy_cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    window = time.monotonic() - t0
    return {"busy_cores": round((busy_cpu_seconds() - busy) / window, 3),
            "top": top_others(everyone, all_cpu_seconds(), {os.getpid()}, window)}


def git_state() -> dict:
    """Which code was measured: HEAD, and whether files outside bench/ differed from it."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, cwd=HERE.parent,
                                  timeout=10).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""
    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
               if not line[3:].startswith("bench/")]
    return {"head": git("rev-parse", "--short", "HEAD"), "changed_outside_bench": changed}


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.db: Database | None = None
        self.spend_token = secrets.token_urlsafe(24)
        self.admin_token = secrets.token_urlsafe(24)
        self.inference_token = secrets.token_urlsafe(24)
        self.naive_token = secrets.token_urlsafe(24)
        self.servers: list[ServerProcess] = []
        self.tag = uuid.uuid4().hex[:8]
        self.contenders: dict[str, dict] = {}
        self.rss: dict[str, float] = {}
        self.notes: list[str] = []
        self.last_idle: dict = {}
        self.work_dir = Path(tempfile.mkdtemp(prefix="credit-bench-run-"))  # server logs, outbox

    # ---- processes ------------------------------------------------------

    def _start_group(self, name: str, argv: list[str], env: dict[str, str], ready_text: str,
                     per_process: Callable[[], dict[str, str]] = dict) -> list[ServerProcess]:
        group = []
        for i in range(self.args.authority_procs):
            server = ServerProcess(f"{name}-{i}", argv, {**env, **per_process()}, ready_text,
                                   log_dir=self.work_dir).start()
            self.servers.append(server)
            group.append(server)
        time.sleep(0.5)  # anything that fails right after "listening" (a port in use) fails now
        self.check_alive(group)
        return group

    @staticmethod
    def check_alive(group: list[ServerProcess]) -> None:
        for server in group:
            if server.proc is None or server.proc.poll() is not None:
                raise RuntimeError(f"{server.name} exited:\n{server.log_tail()}")

    def start_authority(self) -> tuple[str, list[ServerProcess]]:
        port = free_port()
        pool = str(self.args.db_pool)
        env = python_env(
            DATABASE_URL=self.db.url, CREDIT_LISTEN_ADDR=f"127.0.0.1:{port}",
            CREDIT_AUTH_TOKENS=",".join([f"bench:{self.spend_token}:spend+read",
                                         f"ops:{self.admin_token}:admin+read+mint",
                                         f"inference:{self.inference_token}:spend+read"]),
            CREDIT_DB_POOL_MIN=pool, CREDIT_DB_POOL_MAX=pool, CREDIT_MIGRATE_ON_START="0",
            CREDIT_REUSE_PORT="1" if self.args.authority_procs > 1 else "0", **self.args.authority_env)
        # Metrics stay on, as shipped, each process on a port of its own.
        return f"127.0.0.1:{port}", self._start_group(
            "authority", python_argv("-m", "credit_service", "serve"), env, "credit authority listening",
            per_process=lambda: {"CREDIT_METRICS_PORT": self.args.authority_env.get("CREDIT_METRICS_PORT",
                                                                                    str(free_port()))})

    def start_naive(self) -> tuple[str, list[ServerProcess]]:
        port = free_port()
        env = python_env(NAIVE_DATABASE_URL=self.db.url, NAIVE_LISTEN_ADDR=f"127.0.0.1:{port}",
                         NAIVE_TOKEN=self.naive_token, NAIVE_DB_POOL_MAX=str(self.args.db_pool),
                         NAIVE_REUSE_PORT="1" if self.args.authority_procs > 1 else "0")
        return f"127.0.0.1:{port}", self._start_group("naive", python_argv("-m", "bench.naive_server"), env,
                                                       "naive billing listening")

    def stop(self, group: list[ServerProcess], label: str) -> None:
        for server in group:
            server.stop()
        peaks = [s.peak_rss_mb for s in group]
        self.rss[f"{label}_max"] = round(max(peaks), 1)
        self.rss[f"{label}_sum"] = round(sum(peaks), 1)

    @staticmethod
    def processes(group: list[ServerProcess]) -> list[psutil.Process]:
        return [psutil.Process(s.pid) for s in group]

    # ---- measurements -----------------------------------------------------

    def wait_idle(self) -> dict:
        """Waits (up to --wait-idle s) until the machine is quiet: others' work skews every figure."""
        deadline = time.monotonic() + self.args.wait_idle
        while True:
            sample = machine_idle_check(0.5)
            if sample["busy_cores"] <= IDLE_CORES or time.monotonic() >= deadline:
                break
        if sample["busy_cores"] > IDLE_CORES:
            say(f"warning: machine still busy ({sample}); measuring anyway")
        self.last_idle = sample
        return sample

    def load(self, spec: LoadSpec, group: list[ServerProcess], procs: int | None = None) -> LoadResult:
        asyncio.run(seeding.settle(self.db.url))
        self.check_alive(group)
        self.wait_idle()
        return run_load(spec, procs=procs or self.args.load_procs, concurrency=self.args.concurrency,
                        warmup=self.args.warmup, duration=self.args.duration, servers=self.processes(group),
                        postgres=self.db.postgres_processes, announce=self.announce)

    @staticmethod
    def announce(start: float, end: float) -> None:
        clock = lambda t: time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 10)}"  # noqa: E731
        say(f"measuring from {clock(start)} to {clock(end)}")

    def record(self, name: str, result: LoadResult, **extra) -> dict:
        entry = {**result.as_dict(), **extra, "machine_before": self.last_idle}
        self.contenders[name] = entry
        errors = sum(result.errors.values())
        if result.cpu_cores.get("other", 0) > 0.2:
            self.notes.append(f"{name}: {result.cpu_cores['other']:.2f} cores went to other processes or the "
                              f"kernel during the window ({result.other_processes})")
        say(f"{name}: {result.rate:,.0f}/s  p50 {result.p50_ms:.2f} ms  p99 {result.p99_ms:.2f} ms  "
            f"errors {errors}  cpu {result.cpu_cores}  per server {result.server_cores}  "
            f"others {result.other_processes}  per second {result.per_second}")
        if errors:
            self.notes.append(f"{name}: {errors} failed operations {result.errors}")
        return entry

    def transport(self, addr: str, group: list[ServerProcess]) -> None:
        scan = []
        for procs in self.args.transport_scan:
            result = self.load(LoadSpec("health", addr, channels=self.args.channels), group, procs)
            result = {**result.as_dict(), "machine_before": self.last_idle}
            say(f"transport with {procs} load procs: {result['rate']:,.0f} calls/s  cpu {result['cpu_cores']}  "
                f"others {result['other_processes']}")
            if result["cpu_cores"].get("other", 0) > 0.2:
                self.notes.append(f"transport ({procs} load procs): {result['cpu_cores']['other']:.2f} cores went "
                                  f"to other processes or the kernel ({result['other_processes']})")
            scan.append(result)
        best = max(scan, key=lambda s: s["rate"])
        self.contenders["transport"] = {**best, "scan": scan}
        say(f"transport: best {best['rate']:,.0f} calls/s with {best['procs']} load procs")
        if self.args.load_procs == "auto":
            self.args.load_procs = best["procs"]
            say(f"load generator: {best['procs']} process(es) for the other contenders")
        if not h2load.available():
            self.notes.append("h2load not installed (Debian's nghttp2-client): the compiled-client transport "
                              "check was skipped")
            return
        self.wait_idle()
        compiled = h2load.run_h2load(addr, self.processes(group), duration_s=self.args.duration,
                                     warmup_s=self.args.warmup)
        self.contenders["transport_compiled"] = {**compiled.as_dict(), "machine_before": self.last_idle}
        say(f"transport with h2load (compiled client): {compiled.rate:,.0f} calls/s  cpu {compiled.cpu_cores}  "
            f"failed {compiled.failed}")

    def pairs(self, name: str, addr: str, group: list[ServerProcess], users: list[str]) -> None:
        spec = LoadSpec("pair", addr, token=self.spend_token, users=users, channels=self.args.channels,
                        tag=f"{self.tag}-{name}")
        self.record(name, self.load(spec, group), users=len(users))

    def exhaustion(self, name: str, workload: str, addr: str, group: list[ServerProcess], token: str,
                   call_ms: int) -> None:
        k, attempts, amount = self.args.exhaust_k, self.args.exhaust_attempts, 1000
        org, user = seeding.exhaust_account(call_ms, naive=workload == "naive")
        account = (seeding.naive_account if workload == "naive" else seeding.authority_account)
        spec = LoadSpec(workload, addr, token=token, users=[user], channels=self.args.channels,
                        amount_mc=amount, tag=f"{self.tag}-{name}-{call_ms}", burst=attempts, call_ms=call_ms)
        result = run_load(spec, procs=self.args.load_procs, concurrency=0, servers=self.processes(group))
        state = asyncio.run(account(self.db.url, org, user))
        granted = result.outcomes.get("granted", 0)
        entry = {"call_ms": call_ms, "k": k, "attempts": attempts, "amount_mc": amount, "granted": granted,
                 "outcomes": result.outcomes, "limit_mc": state.limit_mc, "used_mc": state.used_mc,
                 "held_mc": state.held_mc,
                 "overspend_mc": state.overspend_mc, "excess_calls": max(0, granted - k),
                 "used_plus_held_within_limit": state.used_mc + state.held_mc <= state.limit_mc,
                 "used_within_limit": state.used_mc <= state.limit_mc}
        self.contenders[f"exhaustion_{name}" + (f"_call_{call_ms}ms" if call_ms else "")] = entry
        say(f"exhaustion {name} (call {call_ms} ms): granted {granted}/{attempts} (fits {k}), used "
            f"{state.used_mc} held {state.held_mc} limit {state.limit_mc} → overspend {state.overspend_mc} mc")

    def inference(self, authority_addr: str, api_key: str) -> None:
        port = free_port()
        outbox = self.work_dir / "outbox.sqlite3"
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        env = python_env(CREDIT_AUTHORITY_ADDR=authority_addr, CREDIT_SERVICE_TOKEN=self.inference_token,
                         INFERENCE_HOST="127.0.0.1", INFERENCE_PORT=str(port), INFERENCE_OUTBOX_PATH=str(outbox))
        service = ServerProcess("inference", python_argv("-m", "inference_service"), env, ready=healthy,
                                log_dir=self.work_dir).start()
        self.servers.append(service)
        say(f"inference service on {url}, pid {service.pid}")
        try:
            self.wait_idle()
            calls, warm = self.args.inference_calls, max(10, self.args.inference_calls // 10)
            direct = inference.Latencies.of(inference.direct_latencies(warm, calls))
            through = inference.Latencies.of(
                inference.service_latencies(f"{url}/api/v1/llm", api_key, warm, calls))
        finally:
            service.stop()
        self.rss["inference_service"] = round(service.peak_rss_mb, 1)
        entry = {"machine_before": self.last_idle, "calls": calls, "direct": direct.__dict__,
                 "service": through.__dict__, "overhead_p50_ms": through.p50_ms - direct.p50_ms,
                 "overhead_p99_ms": through.p99_ms - direct.p99_ms}
        self.contenders["inference_overhead"] = entry
        say(f"inference: service p50 {through.p50_ms:.2f} ms p99 {through.p99_ms:.2f} ms; direct LiteLLM "
            f"p50 {direct.p50_ms:.2f} ms p99 {direct.p99_ms:.2f} ms → overhead p50 "
            f"{entry['overhead_p50_ms']:.2f} ms p99 {entry['overhead_p99_ms']:.2f} ms")

    def pgbench(self) -> None:
        asyncio.run(seeding.settle(self.db.url))
        self.wait_idle()
        duration = max(2, round(self.args.duration))
        result = run_pgbench(self.db.url, clients=self.args.pgbench_clients, threads=self.args.pgbench_threads,
                             duration_s=duration, postgres=self.db.postgres_processes)
        self.contenders["pgbench_hot_row"] = {**result.as_dict(), "rate": result.tps,
                                              "machine_before": self.last_idle,
                                              "p50_ms": None, "p99_ms": None, "errors": {}}
        say(f"pgbench_hot_row: {result.tps:,.0f} tps (avg latency {result.latency_avg_ms} ms, "
            f"cpu {result.cpu_cores}, others {result.other_processes}, per second {result.per_second})")
        if result.cpu_cores.get("other", 0) > 0.2:
            self.notes.append(f"pgbench_hot_row: {result.cpu_cores['other']:.2f} cores went to other processes or "
                              f"the kernel during the window ({result.other_processes})")

    # ---- the run ----------------------------------------------------------

    def run(self) -> dict:
        a, only = self.args, self.args.only
        started = time.monotonic()
        if a.load_procs == "auto" and "transport" not in only:
            a.load_procs = 1
        say(f"{os.cpu_count()} CPUs; {a.authority_procs} server process(es), {a.load_procs} load process(es), "
            f"{a.concurrency} callers, {a.warmup:g} s warm-up + {a.duration:g} s per contender")
        self.idle_check = machine_idle_check()
        if self.idle_check["busy_cores"] > IDLE_CORES:
            say(f"warning: the machine was already busy before the run ({self.idle_check}); "
                "figures will be low and noisy")
            self.notes.append(f"machine busy before the run: {self.idle_check}")
        self.db = Database.create()
        say("database: " + (f"embedded PostgreSQL in {self.db.embedded.pgdata}, " if self.db.embedded else "")
            + self.db.url)
        try:
            asyncio.run(seeding.seed_naive(self.db.url, a.exhaust_k * 1000))
            addr, authority = self.start_authority()
            say(f"authority on {addr}, pids {[s.pid for s in authority]}")
            seeded = asyncio.run(seeding.seed_authority(
                addr, self.admin_token, spread_users=a.spread_users, spread_orgs=a.spread_orgs,
                exhaust_limit_mc=a.exhaust_k * 1000))
            say(f"seeded {a.spread_users} spread users in {a.spread_orgs} orgs + hot/exhaustion/inference "
                f"accounts: {seeded.rpcs} CreditAdmin RPCs in {seeded.seconds:.1f} s")
            asyncio.run(seeding.analyze(self.db.url))
            if "transport" in only:
                self.transport(addr, authority)
            if "authority_hot" in only:
                self.pairs("authority_hot", addr, authority, [seeding.HOT_USER])
            if "authority_hot_limited" in only:
                self.pairs("authority_hot_limited", addr, authority, [seeding.HOT_LIMITED_USER])
            if "authority_spread" in only:
                self.pairs("authority_spread", addr, authority, seeded.spread_users)
            if "exhaustion" in only:
                for call_ms in seeding.EXHAUST_CALL_MS:
                    self.exhaustion("authority", "pair", addr, authority, self.spend_token, call_ms)
            if "inference" in only:
                self.inference(addr, seeded.inference_api_key)
            self.stop(authority, "authority")
            if "naive" in only:
                addr, naive = self.start_naive()
                say(f"naive server on {addr}, pids {[s.pid for s in naive]}")
                self.record("naive", self.load(LoadSpec("naive", addr, token=self.naive_token,
                                                        users=[seeding.NAIVE_USER], channels=a.channels), naive))
                if "exhaustion" in only:
                    for call_ms in seeding.EXHAUST_CALL_MS:
                        self.exhaustion("naive", "naive", addr, naive, self.naive_token, call_ms)
                self.stop(naive, "naive")
            if "pgbench" in only:
                self.pgbench()
        except BaseException:
            say(f"failed; server logs are in {self.work_dir}")
            raise
        else:
            if not a.keep_db:
                shutil.rmtree(self.work_dir, ignore_errors=True)
        finally:
            for server in self.servers:
                server.stop()
            self.db.close(keep=a.keep_db)
        return self.results(time.monotonic() - started)

    def results(self, elapsed: float) -> dict:
        a, c = self.args, self.contenders
        rate = lambda name: c[name]["rate"] if name in c else None  # noqa: E731
        ex = lambda name, key: c[f"exhaustion_{name}"][key] if f"exhaustion_{name}" in c else None  # noqa: E731
        inf = c.get("inference_overhead", {})
        r = {
            "hot_pairs_per_s": rate("authority_hot"),
            "hot_limited_pairs_per_s": rate("authority_hot_limited"),
            "spread_pairs_per_s": rate("authority_spread"),
            "naive_pairs_per_s": rate("naive"),
            "transport_calls_per_s": rate("transport"),
            "transport_compiled_client_calls_per_s": rate("transport_compiled"),
            "pgbench_hot_tps": rate("pgbench_hot_row"),
            "inference_overhead_p50_ms": inf.get("overhead_p50_ms"),
            "inference_overhead_p99_ms": inf.get("overhead_p99_ms"),
            "overspend_authority": ex("authority", "overspend_mc"),
            "overspend_naive": ex("naive", "overspend_mc"),
            "overspend_authority_calls": ex("authority", "excess_calls"),
            "overspend_naive_calls": ex("naive", "excess_calls"),
            "overspend_authority_call_50ms": ex("authority_call_50ms", "overspend_mc"),
            "overspend_naive_call_50ms": ex("naive_call_50ms", "overspend_mc"),
            "authority_rss_mb": self.rss.get("authority_max"),
        }
        for name in ("authority_hot", "authority_hot_limited", "authority_spread", "naive", "transport"):
            if name in c:
                r[f"{name}_p50_ms"] = round(c[name]["p50_ms"], 3)
                r[f"{name}_p99_ms"] = round(c[name]["p99_ms"], 3)
        r.update({
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "quick": a.quick,
            "duration_s": a.duration,
            "warmup_s": a.warmup,
            "concurrency": a.concurrency,
            "load_procs": a.load_procs,
            "channels_per_load_proc": a.channels,
            "authority_procs": a.authority_procs,
            "db_pool_per_proc": a.db_pool,
            "authority_env": a.authority_env,
            "spread_users": a.spread_users,
            "spread_orgs": a.spread_orgs,
            "database": "DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded PostgreSQL",
            "elapsed_s": round(elapsed, 1),
            "machine_before_run": self.idle_check,
            "git": git_state(),
            "rss_mb": self.rss,
            "contenders": c,
            "notes": self.notes,
        })
        r["targets"] = report.evaluate(r)
        return r


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results = Bench(args).run()
    print()
    print(report.render(results))
    args.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwrote {args.output} ({results['elapsed_s']} s)")
    if args.strict and not all(t["met"] for t in results["targets"]):
        sys.exit(1)
