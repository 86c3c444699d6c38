"""The migration runner applies each file once, even when replicas start together; migrations/functions/
holds the current definition of every SQL function, re-applied when its file changes; applied numbered
migrations are immutable."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path

import asyncpg
import pytest

from credit_service.migrate import (
    FUNCTIONS_SUBDIR,
    MIGRATIONS_DIR,
    discover,
    discover_functions,
    migrate,
    run,
)


async def new_database(database_url: str) -> str:
    name = f"migrate_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    return database_url.rsplit("/", 1)[0] + "/" + name


async def definitions(url: str) -> dict[str, tuple[str, list[str] | None]]:
    """Every function of the public schema (extensions' aside): signature -> (definition, SET clauses)."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            """SELECT p.oid::regprocedure::TEXT AS signature, pg_get_functiondef(p.oid) AS definition, p.proconfig
                 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                WHERE n.nspname = 'public'
                  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                                     AND d.objid = p.oid AND d.deptype = 'e')""")
        triggers = await conn.fetch("SELECT tgname, pg_get_triggerdef(oid) AS definition FROM pg_trigger "
                                    "WHERE NOT tgisinternal")
    finally:
        await conn.close()
    found = {r["signature"]: (r["definition"], r["proconfig"]) for r in rows}
    found.update({f"trigger {r['tgname']}": (r["definition"], None) for r in triggers})
    return found


async def test_concurrent_migrations_apply_each_file_exactly_once(database_url):
    url = await new_database(database_url)

    results = await asyncio.gather(*(migrate(url) for _ in range(4)))
    expected = [f"{m.version:04d}_{m.name}" for m in discover()]
    assert sorted(results, key=len)[-1] == expected
    assert sum(len(r) for r in results) == len(expected), "each migration applied by exactly one runner"
    assert await migrate(url) == []

    conn = await asyncpg.connect(url)
    assert [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")] == \
        [m.version for m in discover()]
    await conn.close()


async def test_a_fresh_database_and_one_migrated_through_every_release_define_the_same_functions(
        database_url, tmp_path):
    fresh = await new_database(database_url)
    applied = await run(fresh)
    assert applied.migrations == [f"{m.version:04d}_{m.name}" for m in discover()]
    assert sorted(applied.functions) == [f.name for f in discover_functions()]

    # As older releases did: one numbered migration more each time, no functions/ directory.
    stepped = await new_database(database_url)
    history = tmp_path / "history"
    history.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        shutil.copy(path, history / path.name)
        assert await migrate(stepped, history) == [path.stem]
    applied = await run(stepped)  # this release
    assert applied.migrations == []
    assert sorted(applied.functions) == [f.name for f in discover_functions()]

    fresh_definitions, stepped_definitions = await definitions(fresh), await definitions(stepped)
    assert fresh_definitions == stepped_definitions
    live = sorted({signature.split("(")[0] for signature in fresh_definitions if not signature.startswith("trigger ")})
    assert live == [f.name for f in discover_functions()], "each live function has its one file in functions/"
    assert (await run(fresh)).functions == [] and (await run(stepped)).functions == []


@pytest.fixture
def migrations_copy(tmp_path) -> Path:
    copy = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, copy)
    return copy


async def test_editing_a_function_file_re_applies_it_on_the_next_start(database_url, migrations_copy):
    url = await new_database(database_url)
    await run(url, migrations_copy)
    path = migrations_copy / FUNCTIONS_SUBDIR / "credit_alert_threshold_mc.sql"
    path.write_text(path.read_text().replace("SELECT CASE WHEN p_kind = 'absolute' THEN p_value",
                                             "SELECT /* edited */ CASE WHEN p_kind = 'absolute' THEN p_value"))
    # A new function whose LANGUAGE sql body calls one from a file later in name order.
    (migrations_copy / FUNCTIONS_SUBDIR / "aa_twice.sql").write_text(
        "CREATE OR REPLACE FUNCTION aa_twice(x BIGINT) RETURNS BIGINT LANGUAGE sql AS $$ SELECT zz_one(x) * 2 $$;\n")
    (migrations_copy / FUNCTIONS_SUBDIR / "zz_one.sql").write_text(
        "CREATE OR REPLACE FUNCTION zz_one(x BIGINT) RETURNS BIGINT LANGUAGE sql AS $$ SELECT x $$;\n")

    applied = await run(url, migrations_copy)
    assert applied.migrations == []
    assert sorted(applied.functions) == ["aa_twice", "credit_alert_threshold_mc", "zz_one"]
    conn = await asyncpg.connect(url)
    try:
        definition = await conn.fetchval("SELECT pg_get_functiondef('credit_alert_threshold_mc'::regproc)")
        assert "/* edited */" in definition
        assert await conn.fetchval("SELECT aa_twice(21)") == 42
        checksums = dict(await conn.fetch("SELECT name, checksum FROM schema_functions"))
        assert checksums == {f.name: f.checksum for f in discover_functions(migrations_copy)}
    finally:
        await conn.close()
    assert (await run(url, migrations_copy)).functions == [], "an unchanged file is not applied again"


async def test_editing_an_applied_numbered_migration_is_refused_before_anything_runs(database_url,
                                                                                      migrations_copy):
    url = await new_database(database_url)
    await run(url, migrations_copy)
    applied_file = migrations_copy / "0002_hot_path.sql"
    applied_file.write_text(applied_file.read_text() + "\n-- edited after it was applied\n")
    (migrations_copy / "9999_pending.sql").write_text("CREATE TABLE pending_migration_ran (x INT);\n")
    function_file = migrations_copy / FUNCTIONS_SUBDIR / "credit_alert_below.sql"
    function_file.write_text(function_file.read_text().replace("SELECT CASE", "SELECT /* edited */ CASE"))

    with pytest.raises(RuntimeError, match="0002_hot_path changed after it was applied"):
        await run(url, migrations_copy)
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT to_regclass('pending_migration_ran')") is None
        assert "/* edited */" not in await conn.fetchval("SELECT pg_get_functiondef('credit_alert_below'::regproc)")
    finally:
        await conn.close()


def test_a_function_file_defines_exactly_the_function_it_is_named_after(migrations_copy):
    functions = migrations_copy / FUNCTIONS_SUBDIR
    (functions / "credit_balance.sql").rename(functions / "credit_balance_renamed.sql")
    with pytest.raises(ValueError, match="credit_balance_renamed.sql must hold one CREATE OR REPLACE FUNCTION"):
        discover_functions(migrations_copy)


async def test_a_function_file_that_cannot_be_applied_changes_no_function(database_url, migrations_copy):
    url = await new_database(database_url)
    await run(url, migrations_copy)
    edited = migrations_copy / FUNCTIONS_SUBDIR / "credit_alert_below.sql"
    edited.write_text(edited.read_text().replace("SELECT CASE", "SELECT /* edited */ CASE"))
    (migrations_copy / FUNCTIONS_SUBDIR / "broken.sql").write_text(
        "CREATE OR REPLACE FUNCTION broken() RETURNS BIGINT LANGUAGE sql AS $$ SELECT no_such_function() $$;\n")

    with pytest.raises(RuntimeError, match="functions/broken.sql"):
        await run(url, migrations_copy)
    conn = await asyncpg.connect(url)
    try:
        assert "/* edited */" not in await conn.fetchval("SELECT pg_get_functiondef('credit_alert_below'::regproc)")
        assert await conn.fetchval("SELECT to_regproc('broken')") is None
    finally:
        await conn.close()
