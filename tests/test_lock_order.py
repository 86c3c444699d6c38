"""Every place that locks several accounts locks them in one order (issue 11, item 6).

Hot-path batches (credit_batch), the expiry sweeper (credit_expire_holds) and
the alert-threshold changes (Storage._lock_org_allocations) each lock many
account rows in one transaction. If two of them sort accounts differently,
say batches by the text 'org/<org>/<user>' and the sweeper by the tuple
(funding kind, org, user), then ids like 'acme' and 'acme-eu' ('/' is 0x2F,
'-' is 0x2D) sort one way in one place and the other way in the other, two
transactions can each hold what the other waits for, and PostgreSQL aborts
one of them: a whole batch of callers answered INTERNAL.

The order each place really uses is measured, not read from the source: a
gate transaction locks one account, the place under test runs until it
waits for that account, and the accounts it already holds (rows a probe
cannot lock, FOR SHARE SKIP LOCKED) give the gated account's position.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import grpc
import pytest
from conftest import AuthorityProcess, Stub
from invariants import assert_invariants

from credit.v1 import admin_pb2, admin_pb2_grpc, authority_pb2, authority_pb2_grpc
from credit_service.migrate import migrate
from credit_service.storage import BATCH_SQL, HotOp, Storage, init_connection

Account = tuple[str, str | None, str]  # (funding kind, org_id or None, user_id)

ORGS = ["acme", "acme-eu", "acme/x", "a", "a-b", "a.b"]
ACME_USERS = ["u", "u-x", "u.x", "u/x"]
SOLOS = ["solo", "solo-x", "solo/x"]


def _tuple_order(account: Account) -> tuple[bytes, bytes, bytes]:
    """(funding kind, org, user), each compared bytewise (COLLATE "C"), whatever the database's collation."""
    kind, org, user = account
    return kind.encode(), (org or "").encode(), user.encode()


async def _fresh_database(database_url: str) -> str:
    name = f"lock_order_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(database_url)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    url = database_url.rsplit("/", 1)[0] + "/" + name
    await migrate(url)
    return url


@pytest.fixture(scope="module")
async def crossed(database_url) -> tuple[str, list[Account]]:
    """A database of its own (no authority sweeps it) with accounts whose ids sort differently as
    text keys and as tuples, each with an expired, not yet swept hold."""
    url = await _fresh_database(database_url)
    storage = await Storage.connect(url, batch_max=1)
    accounts: list[Account] = []
    for user in {"u", *ACME_USERS, *SOLOS}:
        await storage.create_user(user, "", "")
    for org in ORGS:
        await storage.create_organization(org, "")
        await storage.top_up_pool(org, 1_000_000, "po-1", None, "", "test")
        for user in ACME_USERS if org == "acme" else ["u"]:
            await storage.add_member(org, user, "member", False)
            await storage.set_allocation(org, user, 10_000, "test")
            accounts.append(("org", org, user))
    for user in SOLOS:
        await storage.grant_individual(user, 10_000, "test", "grant-1", "test")
        accounts.append(("individual", None, user))
    for _, org, user in accounts:
        await storage.reserve(caller="test", request_id=f"{org}|{user}", request_hash=b"h", user_id=user,
                              org_id=org or "", amount_mc=100, ttl_seconds=60, service_type="",
                              service_name="", metadata={})
    await storage.close()
    conn = await asyncpg.connect(url)
    await conn.execute("UPDATE reservations SET expires_at = now() - interval '1 minute'")
    await conn.close()
    random.Random(7).shuffle(accounts)
    return url, accounts


async def _lock(conn: asyncpg.Connection, account: Account) -> None:
    kind, org, user = account
    if kind == "org":
        await conn.execute("SELECT 1 FROM allocations WHERE org_id = $1 AND user_id = $2 FOR UPDATE", org, user)
    else:
        await conn.execute("SELECT 1 FROM individual_balances WHERE user_id = $1 FOR UPDATE", user)


async def _unlocked(conn: asyncpg.Connection) -> set[Account]:
    async with conn.transaction():
        rows = await conn.fetch("SELECT 'org' AS kind, org_id, user_id FROM allocations FOR SHARE SKIP LOCKED")
        rows += await conn.fetch("""SELECT 'individual' AS kind, NULL::text AS org_id, user_id
                                      FROM individual_balances FOR SHARE SKIP LOCKED""")
    return {(r["kind"], r["org_id"], r["user_id"]) for r in rows}


async def _wait_blocked(probe: asyncpg.Connection, pid: int, task: asyncio.Task) -> bool:
    """True once the backend waits for a lock; False if the task ended without waiting."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if task.done():
            return False
        if await probe.fetchval("SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid) == "Lock":
            return True
        await asyncio.sleep(0.01)
    raise AssertionError("the transaction under test neither waited for the gated account nor finished")


async def _lock_order(url: str, accounts: list[Account],
                      run: Callable[[asyncpg.Connection], Awaitable[object]]) -> list[Account]:
    """The order in which `run` (in a transaction, rolled back afterwards) locks `accounts`;
    an account it never waits for is left out."""
    gate, locker, probe = [await asyncpg.connect(url) for _ in range(3)]
    await init_connection(locker)
    position: dict[Account, int] = {}
    try:
        for account in accounts:
            gate_tx = gate.transaction()
            await gate_tx.start()
            await _lock(gate, account)
            locker_tx = locker.transaction()
            await locker_tx.start()
            task = asyncio.create_task(run(locker))
            if await _wait_blocked(probe, locker.get_server_pid(), task):
                held = set(accounts) - await _unlocked(probe) - {account}
                position[account] = len(held)
            await gate_tx.rollback()
            await task
            await locker_tx.rollback()
    finally:
        for conn in (gate, locker, probe):
            await conn.close()
    return sorted(position, key=position.__getitem__)


def _batch_of_reserves(accounts: list[Account]) -> Callable[[asyncpg.Connection], Awaitable[object]]:
    """credit_batch (what the hot path's batcher sends) with one Reserve per account, in shuffled arrival order."""
    operations = [HotOp("reserve", "test", uuid.uuid4().hex, b"h", user, org or "", 1, 60, "", "", {})
                  for _, org, user in accounts]
    random.Random(3).shuffle(operations)
    columns = [list(column) for column in zip(*operations, strict=True)]
    return lambda conn: conn.fetch(BATCH_SQL, *columns)


def _sweep(conn: asyncpg.Connection) -> Awaitable[object]:
    return conn.fetchval("SELECT credit_expire_holds(1000)")


async def test_batches_the_sweeper_and_allocation_locks_use_one_account_order(crossed):
    url, accounts = crossed
    expected = sorted(accounts, key=_tuple_order)
    acme = [a for a in accounts if a[1] == "acme"]
    measured = {
        "credit_batch": await _lock_order(url, accounts, _batch_of_reserves(accounts)),
        "credit_expire_holds": await _lock_order(url, accounts, _sweep),
        "Storage._lock_org_allocations": await _lock_order(
            url, acme, lambda conn: Storage._lock_org_allocations(conn, "acme")),
    }
    assert measured == {
        "credit_batch": expected,
        "credit_expire_holds": expected,
        "Storage._lock_org_allocations": [a for a in expected if a in acme],
    }


async def test_a_batch_and_the_sweeper_on_crossed_accounts_do_not_deadlock(crossed):
    """Deterministic interleaving: a gate holds one of two accounts ('acme' and 'acme-eu'), a batch
    and then the sweeper queue behind it, the gate lets go. With two orders, one of the two runs
    ends in 'deadlock detected' and a whole batch aborted."""
    url, _ = crossed
    pair: list[Account] = [("org", "acme", "u"), ("org", "acme-eu", "u")]
    gate, batch, sweeper, probe = [await asyncpg.connect(url) for _ in range(4)]
    await init_connection(batch)
    failures = []
    try:
        for gated in pair:
            gate_tx, batch_tx, sweeper_tx = gate.transaction(), batch.transaction(), sweeper.transaction()
            await gate_tx.start()
            await _lock(gate, gated)
            await batch_tx.start()
            batch_task = asyncio.create_task(_batch_of_reserves(pair)(batch))
            assert await _wait_blocked(probe, batch.get_server_pid(), batch_task)
            await sweeper_tx.start()
            sweep_task = asyncio.create_task(_sweep(sweeper))
            assert await _wait_blocked(probe, sweeper.get_server_pid(), sweep_task)
            await gate_tx.rollback()
            # The batch queued first, so it finishes first (or is the deadlock's victim); the sweeper
            # may then still wait for the batch's transaction, which ends here.
            for task, tx in ((batch_task, batch_tx), (sweep_task, sweeper_tx)):
                try:
                    await asyncio.wait_for(task, 30)
                except asyncpg.PostgresError as error:
                    failures.append(f"gate on {gated[1]}: {type(error).__name__}: {error}")
                await tx.rollback()
    finally:
        for conn in (gate, batch, sweeper, probe):
            await conn.close()
    assert not failures


LOAD_ORGS = ["acme", "acme-eu", "a", "a-b", "a.b"]
LOAD_MEMBERS = ["u", "u-x", "u.x"]
LOAD_SOLOS = ["solo", "solo-x"]


async def test_expiry_commits_and_allocation_changes_on_crossed_accounts_run_without_deadlocks(database_url, tokens):
    """Two authority replicas (each with its sweeper and hot-path batches) and admin changes work the
    same crossed accounts at once: short-lived holds expire by the sweeper while other holds are
    committed or released in batches and alert thresholds (which lock all of an org's allocations)
    and allocations change. No call may fail, no deadlock may be logged, the ledger must balance."""
    url = await _fresh_database(database_url)
    env = {"CREDIT_SWEEP_INTERVAL_SECONDS": "0.02", "CREDIT_BATCH_IN_FLIGHT": "2"}
    replicas = [AuthorityProcess(url, tokens, env).start() for _ in range(2)]
    channels = [grpc.aio.insecure_channel(r.addr) for r in replicas]
    try:
        meta = (("authorization", f"Bearer {tokens.spend}"),)
        admin_meta = (("authorization", f"Bearer {tokens.admin}"),)
        with grpc.insecure_channel(replicas[0].addr) as sync_channel:
            admin = Stub(admin_pb2_grpc.CreditAdminStub(sync_channel), tokens.admin)
            for user in LOAD_MEMBERS + LOAD_SOLOS:
                admin.CreateUser(admin_pb2.CreateUserRequest(user_id=user))
            for org in LOAD_ORGS:
                admin.CreateOrganization(admin_pb2.CreateOrganizationRequest(org_id=org))
                admin.TopUpPool(admin_pb2.TopUpPoolRequest(org_id=org, amount_millicredits=10**12,
                                                           purchase_reference="po-1"))
                for user in LOAD_MEMBERS:
                    admin.AddMember(admin_pb2.AddMemberRequest(org_id=org, user_id=user))
                    admin.SetAllocation(admin_pb2.SetAllocationRequest(org_id=org, user_id=user,
                                                                       allocation_millicredits=10**9))
            for user in LOAD_SOLOS:
                admin.GrantIndividualCredits(admin_pb2.GrantIndividualCreditsRequest(
                    user_id=user, amount_millicredits=10**9, reference="grant-1"))
        accounts = [(org, user) for org in LOAD_ORGS for user in LOAD_MEMBERS] + [("", u) for u in LOAD_SOLOS]
        spends = [authority_pb2_grpc.CreditAuthorityStub(c) for c in channels]
        admins = [admin_pb2_grpc.CreditAdminStub(c) for c in channels]
        errors: list[str] = []
        counts = {"reserved": 0, "committed": 0, "released": 0, "admin": 0}
        deadline = time.monotonic() + 6
        rng = random.Random(11)

        async def spender() -> None:
            while time.monotonic() < deadline:
                stub = rng.choice(spends)
                org, user = rng.choice(accounts)
                try:
                    hold = await stub.Reserve(authority_pb2.ReserveRequest(
                        request_id=uuid.uuid4().hex, user_id=user, org_id=org, amount_millicredits=rng.randint(1, 50),
                        ttl_seconds=1, service_type="llm_inference"), metadata=meta, timeout=30)
                    counts["reserved"] += 1
                    fate = rng.random()
                    if fate < 0.25:  # the rest are left to the sweeper
                        await stub.Commit(authority_pb2.CommitRequest(
                            reservation_id=hold.reservation_id, amount_millicredits=rng.randint(0, 50)),
                            metadata=meta, timeout=30)
                        counts["committed"] += 1
                    elif fate < 0.4:
                        await stub.Release(authority_pb2.ReleaseRequest(reservation_id=hold.reservation_id),
                                           metadata=meta, timeout=30)
                        counts["released"] += 1
                except grpc.aio.AioRpcError as error:
                    errors.append(f"{error.code().name}: {error.details()}")

        async def administrator() -> None:
            while time.monotonic() < deadline:
                stub = rng.choice(admins)
                org = rng.choice(LOAD_ORGS)
                try:
                    created = await stub.CreateAlertThreshold(admin_pb2.CreateAlertThresholdRequest(
                        org_id=org, user_id=rng.choice(["", *LOAD_MEMBERS]),
                        kind=admin_pb2.ALERT_THRESHOLD_KIND_ABSOLUTE, value=1), metadata=admin_meta, timeout=30)
                    await stub.SetAllocation(admin_pb2.SetAllocationRequest(
                        org_id=org, user_id=rng.choice(LOAD_MEMBERS),
                        allocation_millicredits=10**9 + rng.randint(0, 1000)), metadata=admin_meta, timeout=30)
                    await stub.DeleteAlertThreshold(admin_pb2.DeleteAlertThresholdRequest(
                        org_id=org, threshold_id=created.threshold.threshold_id), metadata=admin_meta, timeout=30)
                    counts["admin"] += 1
                except grpc.aio.AioRpcError as error:
                    errors.append(f"{error.code().name}: {error.details()}")

        await asyncio.gather(*(spender() for _ in range(32)), *(administrator() for _ in range(3)))

        conn = await asyncpg.connect(url)
        try:
            for _ in range(200):  # every hold left open expires (TTL 1 s) and is swept
                if not await conn.fetchval("SELECT count(*) FROM reservations WHERE status = 'held'"):
                    break
                await asyncio.sleep(0.05)
            assert await conn.fetchval("SELECT count(*) FROM reservations WHERE status = 'held'") == 0
            expired = await conn.fetchval("SELECT count(*) FROM reservations WHERE status = 'expired'")
            await assert_invariants(conn)
        finally:
            await conn.close()
    finally:
        for channel in channels:
            await channel.close()
        for replica in replicas:
            replica.stop()
    logged = [line for r in replicas for line in r.log_path.read_text().splitlines()
              if "deadlock" in line.lower() or "40P01" in line]
    assert not errors and not logged, (errors[:5], logged[:5])
    assert counts["reserved"] > 300 and counts["committed"] > 50 and expired > 100 and counts["admin"] > 10, \
        (counts, expired)
