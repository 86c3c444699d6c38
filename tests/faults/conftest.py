"""Fault-test fixtures: processes of each test's own, so killing them disturbs nothing else."""

from __future__ import annotations

import json
import os

import pytest
from conftest import AuthorityProcess, Stub, World
from rest_support import InferenceProcess, make_key  # noqa: F401 - re-exported for the tests

from credit.v1 import admin_pb2_grpc


def report(name: str, **figures) -> None:
    """Prints the measured outcome of a fault test (collected for the README's Reliability section)."""
    line = json.dumps({"fault": name, **figures})
    print(f"\nFAULT-FIGURES {line}")
    path = os.environ.get("FAULT_FIGURES_FILE")
    if path:
        with open(path, "a") as out:
            out.write(line + "\n")


def outbox_count(inference: InferenceProcess) -> int:
    """Commits still parked in the inference service's outbox."""
    import sqlite3

    if not inference.outbox.exists():
        return 0
    with sqlite3.connect(str(inference.outbox)) as conn:
        return conn.execute("SELECT count(*) FROM pending_commits").fetchone()[0]


def admin_world(channel, tokens) -> World:
    return World(Stub(admin_pb2_grpc.CreditAdminStub(channel), tokens.admin))


@pytest.fixture
def own_authority(database_url, tokens):
    process = AuthorityProcess(database_url, tokens).start()
    yield process
    process.stop(kill=True)
