"""The migration runner applies each file once, even when replicas start together."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from credit_service.migrate import discover, migrate


async def test_concurrent_migrations_apply_each_file_exactly_once(database_url):
    name = f"migrate_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = database_url.rsplit("/", 1)[0] + "/" + name

    results = await asyncio.gather(*(migrate(url) for _ in range(4)))
    expected = [f"{m.version:04d}_{m.name}" for m in discover()]
    assert sorted(results, key=len)[-1] == expected
    assert sum(len(r) for r in results) == len(expected), "each migration applied by exactly one runner"
    assert await migrate(url) == []

    conn = await asyncpg.connect(url)
    assert [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")] == \
        [m.version for m in discover()]
    await conn.close()
