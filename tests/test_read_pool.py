"""Slow reads have their own pool (CREDIT_READ_POOL_MAX) with a server-side statement timeout
(CREDIT_READ_STATEMENT_TIMEOUT_SECONDS), on DATABASE_READ_URL when set: analytics cannot take the
connections Reserve and Commit need, a read past the timeout is RESOURCE_EXHAUSTED / READ_TIMEOUT, and
the read pool's server and its replica lag are where the metrics say.

The slow reads are slow for real: a database of its own holds a large generated usage history (rows
written straight into usage_attribution, foreign keys not checked: this database serves only this
module, so no invariant check reads it)."""

from __future__ import annotations

import threading
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import grpc
import pytest
from conftest import AuthorityProcess, Stub, Tokens, World, free_port
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from credit.v1 import admin_pb2, admin_pb2_grpc, authority_pb2, authority_pb2_grpc
from credit_service.migrate import migrate

HISTORY_ROWS = 400_000
BULK_USERS = 100
ANALYSTS = 20
PAIR_DEADLINE_SECONDS = 2.0  # each Reserve and each Commit: the hot path's own deadline
LIGHT_EVERY = 5  # one analyst in five asks a light question (one user's newest rows), the rest heavy ones
# The hot path's pool as small as it goes: one connection for Reserve, Commit and the sweeper.
HOT_ENV = {"CREDIT_DB_POOL_MIN": "1", "CREDIT_DB_POOL_MAX": "1", "CREDIT_BATCH_MAX": "1"}

HISTORY_SQL = """
    INSERT INTO usage_attribution (reservation_id, org_id, user_id, funding_kind, service_type, service_name,
                                   credits_used, request_id, created_at)
    SELECT gen_random_uuid(), NULL, 'bulk-user-' || (i % $2), 'individual', 'llm', 'model-' || (i % 40),
           i % 1000, 'bulk-' || i, now() - make_interval(secs => i)
      FROM generate_series(1, $1) i"""


@pytest.fixture(scope="module")
async def history_url(database_url: str) -> str:
    """A second database on the test server, migrated, with HISTORY_ROWS usage rows over BULK_USERS users."""
    name = f"credit_reads_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(database_url)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    url = database_url.rsplit("/", 1)[0] + "/" + name
    await migrate(url)
    conn = await asyncpg.connect(url)
    async with conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")  # no reservations behind the rows
        await conn.execute(HISTORY_SQL, HISTORY_ROWS, BULK_USERS)
    await conn.execute("ANALYZE usage_attribution")
    await conn.close()
    return url


def read_timeout_reason(error: grpc.RpcError) -> str:
    """The ErrorInfo reason of a RESOURCE_EXHAUSTED answer ('' for any other status)."""
    if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ""
    status = rpc_status.from_call(error)
    for detail in status.details if status else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


def analytics(admin: Stub, heavy: bool) -> str:
    """One QueryUsage: heavy = every row grouped by day; else one user's newest rows (an index scan).
    'ok' or 'timeout' (READ_TIMEOUT); any other outcome fails the test."""
    request = (admin_pb2.QueryUsageRequest(group_by=admin_pb2.USAGE_GROUP_BY_DAY) if heavy
               else admin_pb2.QueryUsageRequest(user_id="bulk-user-7", limit=10))
    try:
        admin.QueryUsage(request, timeout=120)
        return "ok"
    except grpc.RpcError as error:
        assert read_timeout_reason(error) == "READ_TIMEOUT", (error.code(), error.details())
        return "timeout"


def spend_pairs(spend: Stub, user_id: str, until: threading.Event) -> tuple[int, list[str]]:
    """Reserve+Commit pairs, each call with its own deadline, until `until` is set: (pairs done, failures)."""
    done, failures = 0, []
    while not until.is_set() or done == 0:
        try:
            hold = spend.Reserve(authority_pb2.ReserveRequest(
                request_id=uuid.uuid4().hex, user_id=user_id, amount_millicredits=1000, service_type="llm",
                service_name="pairs"), timeout=PAIR_DEADLINE_SECONDS)
            spend.Commit(authority_pb2.CommitRequest(reservation_id=hold.reservation_id, amount_millicredits=700),
                         timeout=PAIR_DEADLINE_SECONDS)
            done += 1
        except grpc.RpcError as error:
            failures.append(f"{error.code().name}: {error.details()}")
            if len(failures) > 5:
                break
    return done, failures


def test_analytics_never_take_the_hot_path_connections(history_url: str, tokens: Tokens) -> None:
    authority = AuthorityProcess(history_url, tokens, {
        **HOT_ENV, "CREDIT_READ_POOL_MAX": "2", "CREDIT_READ_STATEMENT_TIMEOUT_SECONDS": "0.1"}).start()
    try:
        with grpc.insecure_channel(authority.addr) as channel:
            admin = Stub(admin_pb2_grpc.CreditAdminStub(channel), tokens.admin)
            spend = Stub(authority_pb2_grpc.CreditAuthorityStub(channel), tokens.spend)
            user_id = World(admin).user(individual_mc=10**12)
            finished = threading.Event()
            with ThreadPoolExecutor(ANALYSTS + 1) as pool:
                outcomes = [pool.submit(analytics, admin, heavy=i % LIGHT_EVERY != 0) for i in range(ANALYSTS)]
                pairs = pool.submit(spend_pairs, spend, user_id, finished)
                results = [o.result() for o in outcomes]
                finished.set()
                done, failures = pairs.result()
    finally:
        authority.stop()
    print(f"READ-POOL analytics ok={results.count('ok')} timeout={results.count('timeout')} pairs={done}")
    assert failures == []
    assert done >= 1
    assert len(results) == ANALYSTS
    assert results.count("timeout") >= 1  # the heavy reads met the read pool's statement timeout
    assert results.count("ok") >= 1  # the light ones ran on the same pool and finished


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = [line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")]
    assert len(values) == 1, f"{name} not exported"
    return float(values[0])


def test_reads_go_to_database_read_url(database_url: str, history_url: str, tokens: Tokens) -> None:
    """Money on DATABASE_URL, slow reads on DATABASE_READ_URL (here: the history database, whose rows the
    main one does not have)."""
    port = free_port()
    authority = AuthorityProcess(database_url, tokens, {
        "DATABASE_READ_URL": history_url, "CREDIT_METRICS_PORT": str(port),
        "CREDIT_READ_LAG_INTERVAL_SECONDS": "0.2"}).start()
    try:
        with grpc.insecure_channel(authority.addr) as channel:
            admin = Stub(admin_pb2_grpc.CreditAdminStub(channel), tokens.admin)
            spend = Stub(authority_pb2_grpc.CreditAuthorityStub(channel), tokens.spend)
            user_id = World(admin).user(individual_mc=5000)  # written on DATABASE_URL
            hold = spend.Reserve(authority_pb2.ReserveRequest(request_id=uuid.uuid4().hex, user_id=user_id,
                                                              amount_millicredits=2000))
            spend.Commit(authority_pb2.CommitRequest(reservation_id=hold.reservation_id, amount_millicredits=1500))
            balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=user_id))
            bulk = admin.QueryUsage(admin_pb2.QueryUsageRequest(user_id="bulk-user-7"))
            own = admin.QueryUsage(admin_pb2.QueryUsageRequest(user_id=user_id))
            lag = metric(port, "credit_read_replica_lag_seconds")
            read_connections = metric(port, "credit_read_pool_connections")
    finally:
        authority.stop()
    assert balance.used_millicredits == 1500  # the money path read the primary
    assert bulk.total_requests == HISTORY_ROWS // BULK_USERS  # the history database's rows
    assert own.total_requests == 0  # the charge just made is on DATABASE_URL, not where reads go
    assert lag == 0  # the read server is a primary
    assert read_connections >= 1
