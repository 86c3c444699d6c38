"""Issue 5's targets, evaluated on one run's figures, and the printed table."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    name: str
    text: str
    lhs: str  # how the left side is computed, for the record
    rhs: str

    def evaluate(self, r: dict) -> dict:
        lhs, rhs = _eval(self.lhs, r), _eval(self.rhs, r)
        met = (not math.isnan(lhs) and not math.isnan(rhs)
               and (lhs == rhs if self.name.startswith("overspend") else lhs >= rhs))
        return {"name": self.name, "target": self.text, "lhs": round(lhs, 3), "rhs": round(rhs, 3),
                "ratio": round(lhs / rhs, 3) if rhs and not math.isnan(rhs) and not math.isnan(lhs) else None,
                "met": met}


def _eval(expr: str, r: dict) -> float:
    try:
        value = eval(expr, {"__builtins__": {}}, {k: v for k, v in r.items() if isinstance(v, (int, float))})
        return float(value)
    except (NameError, TypeError, ZeroDivisionError):
        return float("nan")


TARGETS = [
    Target("hot_vs_pgbench", "2 × hot_pairs_per_s ≥ pgbench_hot_tps", "2 * hot_pairs_per_s", "pgbench_hot_tps"),
    Target("hot_vs_naive", "hot_pairs_per_s ≥ 2 × naive_pairs_per_s", "hot_pairs_per_s", "2 * naive_pairs_per_s"),
    Target("hot_limited_vs_hot", "hot_limited_pairs_per_s ≥ 0.85 × hot_pairs_per_s", "hot_limited_pairs_per_s",
           "0.85 * hot_pairs_per_s"),
    Target("hot_vs_spread", "hot_pairs_per_s ≥ 0.8 × spread_pairs_per_s", "hot_pairs_per_s",
           "0.8 * spread_pairs_per_s"),
    Target("spread_vs_transport", "2 × spread_pairs_per_s ≥ 0.6 × transport_calls_per_s",
           "2 * spread_pairs_per_s", "0.6 * transport_calls_per_s"),
    # Written so that "lhs ≥ rhs" reads as the target: 5 ≥ overhead.
    Target("inference_overhead", "inference_overhead_p50_ms ≤ 5", "5", "inference_overhead_p50_ms"),
    Target("overspend_authority", "overspend_authority = 0", "overspend_authority", "0"),
    Target("authority_rss", "authority_rss_mb ≤ 200", "200", "authority_rss_mb"),
]


def evaluate(results: dict) -> list[dict]:
    return [t.evaluate(results) for t in TARGETS]


def _fmt(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def render(results: dict) -> str:
    c = results["contenders"]
    header = ["contender", "rate", "unit", "p50 ms", "p99 ms", "errors", "cpu loadgen", "cpu servers", "cpu pg"]
    rows = []
    for name, unit in [("transport", "calls/s"), ("naive", "pairs/s"), ("authority_hot", "pairs/s"),
                       ("authority_hot_limited", "pairs/s"), ("authority_spread", "pairs/s"),
                       ("pgbench_hot_row", "tps")]:
        if name not in c:
            continue
        d = c[name]
        cpu = d.get("cpu_cores", {})
        rows.append([name, _fmt(d.get("rate"), 0), unit, _fmt(d.get("p50_ms"), 2), _fmt(d.get("p99_ms"), 2),
                     _fmt(sum(d.get("errors", {}).values())), _fmt(cpu.get("loadgen"), 2),
                     _fmt(cpu.get("servers"), 2), _fmt(cpu.get("postgres"), 2)])
    if "inference_overhead" in c:
        d = c["inference_overhead"]
        rows.append(["inference_overhead", "-", "ms", _fmt(d["overhead_p50_ms"], 2), _fmt(d["overhead_p99_ms"], 2),
                     "0", "-", "-", "-"])
    out = [table(rows, header)]
    scan = c.get("transport", {}).get("scan", [])
    if scan:
        out.append("\ntransport by load processes (same total concurrency):")
        rows = [[str(s["procs"]), _fmt(s["rate"], 0), _fmt(s["p50_ms"], 2),
                 _fmt(s["cpu_cores"].get("loadgen"), 2), _fmt(s["cpu_cores"].get("servers"), 2)] for s in scan]
        compiled = c.get("transport_compiled")
        if compiled:
            rows.append([f"h2load ({compiled['connections']}x{compiled['streams_per_connection']})",
                         _fmt(compiled["rate"], 0), "-", _fmt(compiled["cpu_cores"].get("loadgen"), 2),
                         _fmt(compiled["cpu_cores"].get("servers"), 2)])
        out.append(table(rows, ["load procs", "calls/s", "p50 ms", "cpu loadgen", "cpu servers"]))
    ex = [(k, v) for k, v in c.items() if k.startswith("exhaustion_")]
    if ex:
        out.append("\nexhaustion (allocation fits K calls, all attempts at once):")
        rows = [[k.removeprefix("exhaustion_"), _fmt(v["call_ms"]), _fmt(v["k"]), _fmt(v["attempts"]),
                 _fmt(v["granted"]), _fmt(v["limit_mc"]), _fmt(v["used_mc"]), _fmt(v["held_mc"]),
                 _fmt(v["overspend_mc"])] for k, v in ex]
        out.append(table(rows, ["contender", "call ms", "K", "attempts", "granted", "limit mc", "used mc", "held mc",
                                "overspend mc"]))
    rss = results.get("rss_mb", {})
    if rss:
        out.append("\npeak RSS (MB): " + ", ".join(f"{k} {_fmt(v, 1)}" for k, v in rss.items()))
    out.append("\ntargets:")
    out.append(table([[t["target"], _fmt(t["lhs"], 1), _fmt(t["rhs"], 1), _fmt(t["ratio"], 2),
                       "PASS" if t["met"] else "FAIL"] for t in results["targets"]],
                     ["target", "lhs", "rhs", "lhs/rhs", "result"]))
    return "\n".join(out)
