"""The hot path's SQL without gRPC: `credit_batch` called in a loop through
asyncpg on a fresh, migrated database, to see PostgreSQL's own share.

    python -m bench.sqlprobe hot               # one account: pairs per second, second by second
    python -m bench.sqlprobe spread            # 1,000 users in 10 orgs: PostgreSQL CPU per pair
    python -m bench.sqlprobe hot --vacuum-first --connections 1 --batch 32 --duration 20

Each round is one batch of Reserves then one batch of Commits of the same
holds. `--vacuum-first` runs VACUUM ANALYZE on the nearly empty tables before
the load, as the bench does before each contender (it is what exposed the
plans that scanned `reservations`, fixed by migration 0007).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
import uuid

import asyncpg

from .infra import Database, cpu_delta, cpu_seconds

SQL = "SELECT * FROM credit_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
LIMIT = 10**13


async def _seed(conn: asyncpg.Connection, users: int, orgs: int) -> list[str]:
    await conn.execute("INSERT INTO users (user_id) SELECT 'u' || i FROM generate_series(1, $1::int) i", users)
    await conn.execute("INSERT INTO organizations (org_id) SELECT 'o' || i FROM generate_series(1, $1::int) i", orgs)
    await conn.execute("""INSERT INTO org_members (org_id, user_id, role, is_default)
                          SELECT 'o' || (i % $2::int + 1), 'u' || i, 'member', true
                            FROM generate_series(1, $1::int) i""", users, orgs)
    await conn.execute("""INSERT INTO org_pools (org_id, total_mc, allocated_mc)
                          SELECT 'o' || i, $2::bigint, $2::bigint FROM generate_series(1, $1::int) i""", orgs, LIMIT)
    await conn.execute("""INSERT INTO allocations (org_id, user_id, limit_mc)
                          SELECT 'o' || (i % $2::int + 1), 'u' || i, $3::bigint / $1::int
                            FROM generate_series(1, $1::int) i""", users, orgs, LIMIT)
    return [f"u{i}" for i in range(1, users + 1)]


async def probe(url: str, args: argparse.Namespace, postgres) -> dict:
    conn = await asyncpg.connect(url)
    users = await _seed(conn, 1 if args.mode == "hot" else 1000, 1 if args.mode == "hot" else 10)
    if args.vacuum_first:
        await conn.execute("VACUUM (ANALYZE)")
    await conn.close()

    async def init(c: asyncpg.Connection) -> None:
        await c.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")

    pool = await asyncpg.create_pool(url, min_size=args.connections, max_size=args.connections, init=init)
    per_second: dict[int, int] = {}
    n = args.batch

    async def worker(t0: float, t_end: float) -> None:
        while time.monotonic() < t_end:
            chosen = [random.choice(users) for _ in range(n)]
            rows = await pool.fetch(SQL, ["reserve"] * n, ["probe"] * n, [uuid.uuid4().hex for _ in range(n)],
                                    [b"h"] * n, chosen, [""] * n, [1000] * n, [600] * n, ["llm_inference"] * n,
                                    ["demo-chat"] * n, [{"estimate_millicredits": 1000, "stream": False}] * n,
                                    [None] * n, [None] * n)
            await pool.fetch(SQL, ["commit"] * n, ["probe"] * n, [None] * n, [None] * n, [None] * n, [None] * n,
                             [600] * n, [None] * n, [None] * n, [None] * n,
                             [{"prompt_tokens": 12, "completion_tokens": 40}] * n,
                             [r["reservation_id"] for r in rows], [None] * n)
            second = int(time.monotonic() - t0)
            per_second[second] = per_second.get(second, 0) + n

    await asyncio.gather(*(worker(time.monotonic(), time.monotonic() + args.warmup)
                           for _ in range(args.connections)))
    per_second.clear()
    if args.statements:
        await pool.execute("SELECT pg_stat_statements_reset()")
    processes = postgres()
    before = cpu_seconds(processes)
    t0 = time.monotonic()
    await asyncio.gather(*(worker(t0, t0 + args.duration) for _ in range(args.connections)))
    elapsed = time.monotonic() - t0
    pg_cpu = cpu_delta(before, cpu_seconds(processes))
    await pool.close()
    pairs = sum(per_second.values())
    statements = await _top_statements(url, pairs) if args.statements else None
    return {"mode": args.mode, "statements_us_per_pair": statements, "pairs_per_s": round(pairs / elapsed),
            "per_second": [
        per_second.get(i, 0) for i in range(int(args.duration))],
        "postgres_cpu_us_per_pair": round(pg_cpu / pairs * 1e6) if pairs else None,
        "postgres_cores": round(pg_cpu / elapsed, 2), "connections": args.connections, "batch": n}


async def _enable_statement_stats(db: Database) -> None:
    """pg_stat_statements with nested statements tracked (embedded PostgreSQL: restarts it)."""
    if db.embedded is None:
        raise SystemExit("--statements needs the embedded PostgreSQL (it restarts the server)")
    conn = await asyncpg.connect(db.url)
    await conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    await conn.execute("ALTER SYSTEM SET pg_stat_statements.track = 'all'")
    await conn.close()
    db.embedded.stop()
    db.embedded.start()
    conn = await asyncpg.connect(db.url)
    await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    await conn.close()


async def _top_statements(url: str, pairs: int) -> list[dict]:
    """Each statement's execution time per Reserve+Commit pair, top 15 (nested ones included,
    so a function's own line contains the statements it runs)."""
    conn = await asyncpg.connect(url)
    rows = await conn.fetch(
        """SELECT regexp_replace(left(query, 90), '\\s+', ' ', 'g') AS query, calls,
                  total_exec_time AS ms FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 15""")
    await conn.close()
    return [{"us_per_pair": round(r["ms"] * 1000 / pairs, 1), "calls_per_pair": round(r["calls"] / pairs, 2),
             "query": r["query"]} for r in rows]


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.sqlprobe", description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["hot", "spread"])
    p.add_argument("--connections", type=int, default=2)
    p.add_argument("--batch", type=int, default=16, help="operations per credit_batch call")
    p.add_argument("--duration", type=float, default=8)
    p.add_argument("--warmup", type=float, default=2)
    p.add_argument("--vacuum-first", action="store_true")
    p.add_argument("--statements", action="store_true",
                   help="pg_stat_statements (nested too): execution time per pair of the top statements")
    args = p.parse_args()
    db = Database.create()
    try:
        if args.statements:
            asyncio.run(_enable_statement_stats(db))
        print(json.dumps(asyncio.run(probe(db.url, args, db.postgres_processes)), indent=1))
    finally:
        db.close()


if __name__ == "__main__":
    main()
