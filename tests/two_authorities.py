"""Two authority processes on the test database (a pytest plugin, loaded by conftest.py): the fixtures
`authorities` (module-scoped: each with several small hot-path batches in flight, and its own metrics
port) and `spenders` (one asyncio CreditAuthority stub per process; call i goes to process i % 2)."""

from __future__ import annotations

import urllib.request
from collections import Counter
from dataclasses import dataclass

import grpc
import pytest
from conftest import AuthorityProcess, Stub, free_port
from prometheus_client.parser import text_string_to_metric_families

from credit.v1 import authority_pb2_grpc

# Each process: up to 4 hot-path transactions at once, of at most 4 operations each.
BATCH_MAX = 4
BATCH_IN_FLIGHT = 4
APP_PREFIX = "credit-race-"  # application_name of their connections (pg_stat_activity tells them apart)


def with_application_name(url: str, name: str) -> str:
    """The database URL with an application_name, so pg_stat_activity tells the processes apart."""
    return f"{url}{'&' if '?' in url else '?'}application_name={name}"


@dataclass
class Authority:
    name: str
    process: AuthorityProcess
    metrics_port: int

    def reserve_retries(self) -> Counter:
        """credit_reserve_retries_total of this process, by path."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        counts: Counter = Counter()
        for family in text_string_to_metric_families(text):
            if family.name == "credit_reserve_retries":
                for sample in family.samples:
                    if sample.name == "credit_reserve_retries_total":
                        counts[sample.labels["path"]] += int(sample.value)
        return counts


@pytest.fixture(scope="module")
def authorities(database_url, tokens):
    """Two authority processes on one database, each with several small batches in flight."""
    started: list[Authority] = []
    try:
        for name in ("a", "b"):
            metrics_port = free_port()
            process = AuthorityProcess(with_application_name(database_url, APP_PREFIX + name), tokens, {
                "CREDIT_BATCH_MAX": str(BATCH_MAX), "CREDIT_BATCH_IN_FLIGHT": str(BATCH_IN_FLIGHT),
                "CREDIT_DB_POOL_MAX": str(BATCH_IN_FLIGHT + 2), "CREDIT_METRICS_PORT": str(metrics_port),
                "CREDIT_ACCESS_LOG": "0"}).start()
            started.append(Authority(name, process, metrics_port))
        yield started
    finally:
        for authority in started:
            authority.process.stop()


@pytest.fixture
async def spenders(authorities, tokens):
    """One asyncio stub per authority process; call i goes to process i % 2."""
    channels = [grpc.aio.insecure_channel(a.process.addr) for a in authorities]
    try:
        yield [Stub(authority_pb2_grpc.CreditAuthorityStub(ch), tokens.spend) for ch in channels]
    finally:
        for ch in channels:
            await ch.close()
