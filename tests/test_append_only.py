"""The money history cannot be changed or truncated by the service's own role (issue 17).

ledger_entries, usage_attribution, pool_top_ups, individual_grants and payment_events refuse UPDATE,
DELETE and TRUNCATE (migration 0017; 0001's row trigger covered only UPDATE/DELETE of the ledger). The
test connects with DATABASE_URL — the role the authority itself runs as — and checks that every
attempt raises and that nothing changed.
"""

from __future__ import annotations

import asyncpg
import pytest

from credit.v1 import authority_pb2
from tests.helpers import reserve_request

HISTORY = ["ledger_entries", "usage_attribution", "pool_top_ups", "individual_grants", "payment_events"]


async def _counts(db) -> dict[str, int]:
    return {table: await db.fetchval(f"SELECT count(*) FROM {table}") for table in HISTORY}


@pytest.fixture
async def history(world, spend, db) -> dict[str, int]:
    """At least one row in each table: a grant, a top-up, a committed spend, a payment event."""
    world.user(individual_mc=1_000)
    org, user = world.funded_member(allocation_mc=5_000)
    hold = spend.Reserve(reserve_request(user, 1_000, org))
    spend.Commit(authority_pb2.CommitRequest(reservation_id=hold.reservation_id, amount_millicredits=700))
    await db.execute("""INSERT INTO payment_events (event_id, event_type, outcome, session_id)
                        VALUES ('evt_append_only_' || gen_random_uuid(), 'test', 'ignored', NULL)""")
    counts = await _counts(db)
    assert all(counts.values()), counts
    return counts


@pytest.mark.parametrize("table", HISTORY)
async def test_truncate_of_the_money_history_is_refused(history, db, table):
    with pytest.raises(asyncpg.PostgresError, match=f"{table} is append-only"):
        await db.execute(f"TRUNCATE {table} CASCADE")
    assert await _counts(db) == history


@pytest.mark.parametrize("table", HISTORY)
async def test_update_and_delete_of_the_money_history_are_refused(history, db, table):
    column = {"ledger_entries": "note", "usage_attribution": "credits_used", "pool_top_ups": "amount_mc",
              "individual_grants": "amount_mc", "payment_events": "outcome"}[table]
    before = await db.fetch(f"SELECT * FROM {table} ORDER BY 1, 2")
    with pytest.raises(asyncpg.PostgresError, match="append-only"):
        await db.execute(f"UPDATE {table} SET {column} = {column}")
    with pytest.raises(asyncpg.PostgresError, match="append-only"):
        await db.execute(f"DELETE FROM {table}")
    assert await db.fetch(f"SELECT * FROM {table} ORDER BY 1, 2") == before
