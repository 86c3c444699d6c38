"""Migration runner: the schema's history, then the current SQL functions.

* migrations/NNNN_name.sql — the history, applied in order, once each, each in
  its own transaction and recorded in schema_migrations with its checksum. An
  applied migration is immutable: if its file has changed since, the runner
  refuses to start, before applying anything.
* migrations/functions/<name>.sql — the current definition of each SQL
  function (`CREATE OR REPLACE FUNCTION <name>(…)`), one file per function
  (Flyway's repeatable migrations). After the history, every file whose
  checksum differs from the one recorded in schema_functions is applied (all
  of them when a numbered migration ran now, so that the files win over any
  definition the history made), in name order, in one transaction. A file
  that fails for a missing function or table (a `LANGUAGE sql` body naming a
  function of a later file) is retried after the others.

A session-level advisory lock makes concurrent starts of several replicas
safe: one applies, the others wait and then find nothing to do.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
FUNCTIONS_SUBDIR = "functions"
_LOCK_KEY = 0x43524544  # "CRED"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_FUNCTION_NAME = re.compile(r"^([a-z_][a-z0-9_]*)\.sql$")
# A body naming what a later file creates: retried once the others are in.
_MISSING = (asyncpg.UndefinedFunctionError, asyncpg.UndefinedTableError, asyncpg.UndefinedObjectError)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class FunctionFile:
    """migrations/functions/<name>.sql: the current definition of function <name>."""

    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass
class Applied:
    migrations: list[str] = field(default_factory=list)  # NNNN_name of the numbered migrations applied now
    functions: list[str] = field(default_factory=list)  # names of the function files applied now


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise ValueError(f"migration file name must be NNNN_name.sql: {path.name}")
        found.append(Migration(int(match.group(1)), match.group(2), path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError("two migrations share a version number")
    return found


def discover_functions(directory: Path = MIGRATIONS_DIR) -> list[FunctionFile]:
    """The files of directory/functions, by name; each defines exactly the function it is named after."""
    found = []
    for path in sorted((directory / FUNCTIONS_SUBDIR).glob("*.sql")):
        match = _FUNCTION_NAME.match(path.name)
        if not match:
            raise ValueError(f"function file name must be <function_name>.sql: {path.name}")
        sql = path.read_text()
        defined = re.findall(r"\bCREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+([a-z_][a-z0-9_.]*)\s*\(", sql, re.I)
        if defined != [match.group(1)] or not re.search(r"\bCREATE\s+OR\s+REPLACE\s+FUNCTION\b", sql, re.I):
            raise ValueError(f"{FUNCTIONS_SUBDIR}/{path.name} must hold one CREATE OR REPLACE FUNCTION "
                             f"{match.group(1)}(…), found: {', '.join(defined) or 'none'}")
        found.append(FunctionFile(match.group(1), sql))
    return found


async def migrate(database_url: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Applies pending migrations, then changed function files; returns the migrations applied now."""
    return (await run(database_url, directory)).migrations


async def run(database_url: str, directory: Path = MIGRATIONS_DIR) -> Applied:
    """Applies pending migrations, then changed function files; returns what it applied."""
    migrations = discover(directory)
    functions = discover_functions(directory)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        applied = Applied()
        applied.migrations = await _apply_migrations(conn, migrations)
        applied.functions = await _apply_functions(conn, functions, everything=bool(applied.migrations))
        return applied
    finally:
        try:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
        finally:
            await conn.close()


async def _apply_migrations(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    await conn.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
               version INT PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL,
               applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"""
    )
    done = {r["version"]: r["checksum"] for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")}
    changed = [f"{m.version:04d}_{m.name}" for m in migrations if m.version in done and done[m.version] != m.checksum]
    if changed:
        raise RuntimeError(f"migration {', '.join(changed)} changed after it was applied: applied migrations "
                           "are immutable (restore the file; change functions in migrations/functions/, "
                           "the schema in a new numbered migration)")
    applied_now = []
    for migration in migrations:
        if migration.version in done:
            continue
        async with conn.transaction():
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version, migration.name, migration.checksum,
            )
        applied_now.append(f"{migration.version:04d}_{migration.name}")
    return applied_now


async def _apply_functions(conn: asyncpg.Connection, functions: list[FunctionFile], everything: bool) -> list[str]:
    """Applies the function files whose checksum changed (all when `everything`), in one transaction."""
    await conn.execute(
        """CREATE TABLE IF NOT EXISTS schema_functions (
               name TEXT PRIMARY KEY, checksum TEXT NOT NULL,
               applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"""
    )
    async with conn.transaction():
        recorded = {r["name"]: r["checksum"] for r in await conn.fetch("SELECT name, checksum FROM schema_functions")}
        pending = [f for f in functions if everything or recorded.get(f.name) != f.checksum]
        applied_now: list[str] = []
        while pending:
            deferred: list[tuple[FunctionFile, Exception]] = []
            for function in pending:
                try:
                    async with conn.transaction():  # a savepoint: a deferred file leaves nothing behind
                        await conn.execute(function.sql)
                except _MISSING as error:
                    deferred.append((function, error))
                    continue
                applied_now.append(function.name)
            if len(deferred) == len(pending):
                stuck, cause = deferred[0]
                raise RuntimeError(f"{FUNCTIONS_SUBDIR}/{stuck.name}.sql: {cause}") from cause
            pending = [function for function, _ in deferred]
        for function in functions:
            if function.name in applied_now:
                await conn.execute(
                    """INSERT INTO schema_functions (name, checksum) VALUES ($1, $2)
                       ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now()""",
                    function.name, function.checksum,
                )
        # A file removed (its function dropped by a numbered migration) is forgotten.
        await conn.execute("DELETE FROM schema_functions WHERE NOT (name = ANY($1::TEXT[]))",
                           [f.name for f in functions])
    return applied_now
