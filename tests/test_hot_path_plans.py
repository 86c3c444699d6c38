"""The hot-path functions reach their rows by key, whatever the planner believes.

A plan cached while `reservations` looked empty scanned the whole table for
every lookup and kept doing so as it grew: throughput on a busy account fell
by half within seconds (migration 0007). Here the session makes sequential
scans look free and index scans dear, then runs every hot-path function with
auto_explain reporting each nested statement's plan, foreign-key checks
included: none may scan a table. A control run of the same calls with the
functions' own setting removed must show scans, so the costs really do tempt
the planner.
"""

from __future__ import annotations

import re
import uuid

import asyncpg

from credit.v1 import admin_pb2
from credit_service.storage import init_connection

SCAN = re.compile(r"Seq Scan on (?!pg_)(\w+)")  # our tables (not the catalogue asyncpg reads)

HOT_PATH_FUNCTIONS = (
    "credit_resolve_funding(TEXT, TEXT)", "credit_balance(TEXT, TEXT)",
    "credit_reserve_op(TEXT, TEXT, BYTEA, TEXT, TEXT, BIGINT, INT, TEXT, TEXT, JSONB, TEXT, BIGINT)",
    "credit_commit(TEXT, UUID, BIGINT, JSONB, BIGINT)", "credit_release(TEXT, UUID, TEXT)",
    "credit_expire_holds(INT)",
    "credit_batch(TEXT[], TEXT[], TEXT[], BYTEA[], TEXT[], TEXT[], BIGINT[], INT[], TEXT[], TEXT[], JSONB[], "
    "UUID[], TEXT[], TEXT[], BIGINT[])",
)


async def _explained_connection(database_url: str, plans: list[str]) -> asyncpg.Connection:
    conn = await asyncpg.connect(database_url)
    await init_connection(conn)
    await conn.execute("""
        LOAD 'auto_explain';
        SET auto_explain.log_min_duration = 0;
        SET auto_explain.log_nested_statements = on;
        SET auto_explain.log_level = 'notice';
        SET client_min_messages = 'notice';
        SET seq_page_cost = 0; SET cpu_tuple_cost = 0; SET random_page_cost = 1000;
        SET plan_cache_mode = force_generic_plan;
    """)
    conn.add_log_listener(lambda _conn, message: plans.append(message.message))
    return conn


async def _every_hot_path_call(conn: asyncpg.Connection, org_id: str, user_id: str) -> None:
    caller = f"plans-{uuid.uuid4().hex[:8]}"

    async def reserve() -> uuid.UUID:
        row = await conn.fetchrow(
            "SELECT * FROM credit_reserve_op($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            caller, uuid.uuid4().hex, b"h", user_id, org_id, 1_000, 600, "llm", "m", {"k": 1}, "", 50)
        assert row["outcome"] == "ok", row
        return row["reservation_id"]

    await conn.fetchrow("SELECT * FROM credit_balance($1, $2)", user_id, org_id)
    committed = await reserve()
    assert (await conn.fetchrow("SELECT * FROM credit_commit($1, $2, $3, $4, $5)",
                                caller, committed, 600, {"t": 1}, 40))["outcome"] == "ok"
    assert await conn.fetchval("SELECT credit_release($1, $2, $3)", caller, await reserve(), "test") == "ok"
    held = await reserve()
    batch = await conn.fetch(
        "SELECT * FROM credit_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        ["reserve", "commit"], [caller, caller], [uuid.uuid4().hex, None], [b"h", None], [user_id, None],
        [org_id, None], [1_000, 500], [600, None], ["llm", None], ["m", None], [{"k": 2}, {"t": 2}],
        [None, held], [None, None], ["", None], [50, 30])
    assert [r["outcome"] for r in batch] == ["ok", "ok"]
    await conn.fetchval("SELECT credit_expire_holds(10)")


async def test_no_hot_path_statement_scans_a_table(database_url, world, admin):
    org_id, user_id = world.funded_member(1_000_000)
    for scope in ({"org_id": org_id}, {"org_id": org_id, "user_id": user_id}):  # the rate-limit paths run too
        admin.SetRateLimit(admin_pb2.SetRateLimitRequest(**scope, requests_per_minute=1_000, tokens_per_minute=10**6,
                                                         max_parallel=100))
    plans: list[str] = []
    conn = await _explained_connection(database_url, plans)
    try:
        await _every_hot_path_call(conn, org_id, user_id)
        nested = [p for p in plans if "Query Text" in p]
        assert len(nested) > 30, "auto_explain reported the nested statements"
        assert any("RI_ConstraintTrigger" in p or 'FROM ONLY "public"' in p for p in nested), \
            "foreign-key checks are among them"
        scanned = sorted({table for p in nested for table in SCAN.findall(p)})
        assert scanned == [], f"hot-path statements scanned {scanned}"

        # Control: without the functions' setting the same costs make the planner scan.
        plans.clear()
        control_run = conn.transaction()
        await control_run.start()
        try:
            for function in HOT_PATH_FUNCTIONS:
                await conn.execute(f"ALTER FUNCTION {function} RESET enable_seqscan")
            await _every_hot_path_call(conn, org_id, user_id)
        finally:
            await control_run.rollback()
        control = sorted({table for p in plans for table in SCAN.findall(p)})
        assert "reservations" in control, control
    finally:
        await conn.close()
