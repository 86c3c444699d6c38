"""Fault-test fixtures: processes of each test's own, so killing them disturbs nothing else; the REST
load's record and its reconciliation with the database."""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import openai
import pytest
from conftest import AuthorityProcess, Stub, World
from rest_support import InferenceProcess, make_key  # noqa: F401 - re-exported for the tests

from credit.v1 import admin_pb2_grpc

from .load import RESERVATIONS, Problems, money_problems


def report(name: str, **figures) -> None:
    """Prints the measured outcome of a fault test (collected for the README's Reliability section)."""
    line = json.dumps({"fault": name, **figures})
    print(f"\nFAULT-FIGURES {line}")
    path = os.environ.get("FAULT_FIGURES_FILE")
    if path:
        with open(path, "a") as out:
            out.write(line + "\n")


def _outbox_rows(inference: InferenceProcess, table: str) -> int:
    if not inference.outbox.exists():
        return 0
    with sqlite3.connect(str(inference.outbox)) as conn:
        known = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] if known else 0


def outbox_count(inference: InferenceProcess) -> int:
    """Commits still parked in the inference service's outbox."""
    return _outbox_rows(inference, "pending_commits")


def refused_count(inference: InferenceProcess) -> int:
    """Commits the authority refused for good (kept by the inference service for an operator)."""
    return _outbox_rows(inference, "refused_commits")


def admin_world(channel, tokens) -> World:
    return World(Stub(admin_pb2_grpc.CreditAdminStub(channel), tokens.admin))


@pytest.fixture
def own_authority(database_url, tokens):
    process = AuthorityProcess(database_url, tokens).start()
    yield process
    process.stop(kill=True)


def served_by_authority(authority: AuthorityProcess, request_ids: set[str]) -> Counter:
    """How often the authority served each (RPC, request id) of ours, from its access log."""
    served: Counter = Counter()
    for line in Path(authority.log_path).read_text(errors="replace").splitlines():
        if '"logger": "access"' not in line:
            continue
        entry = json.loads(line)
        if entry.get("request_id") in request_ids:
            served[entry["rpc"], entry["request_id"]] += 1
    return served


# ---- the REST load ------------------------------------------------------------------------------


@dataclass
class RestRecord:
    """What REST clients were answered, by the X-Request-Id each request carried."""

    status: dict[str, int] = field(default_factory=dict)  # request id → HTTP status (0: no answer)
    queued: set[str] = field(default_factory=set)  # 200 with X-Billing-Status: queued
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)  # request id → monotonic start, end

    def ok(self) -> set[str]:
        return {rid for rid, status in self.status.items() if status == 200}

    def statuses(self) -> dict[str, int]:
        return dict(sorted(Counter(str(s) for s in self.status.values()).items()))

    async def chat(self, client: openai.AsyncOpenAI, model: str, messages: list) -> int:
        """One chat call with a request id of our own; returns its status."""
        rid = uuid.uuid4().hex
        started = time.monotonic()
        try:
            raw = await client.chat.completions.with_raw_response.create(
                model=model, messages=messages, extra_headers={"X-Request-Id": rid})
            status = 200
            if raw.headers.get("X-Billing-Status") == "queued":
                self.queued.add(rid)
        except openai.APIStatusError as error:
            status = error.status_code
        except openai.APIConnectionError:
            status = 0
        self.status[rid] = status
        self.spans[rid] = (started, time.monotonic())
        return status


async def reconcile_rest(db, record: RestRecord, user_id: str, inference: InferenceProcess) -> tuple[dict, Problems]:
    """The REST answers against the database, both ways: (figures, problems by name)."""
    rows = await db.fetch(RESERVATIONS, user_id)
    holds: dict[str, list] = {}
    for r in rows:
        holds.setdefault(r["request_id"].partition(":")[2], []).append(r)
    ok = record.ok()

    def charged_once(rid: str) -> bool:
        found = holds.get(rid, [])
        return len(found) == 1 and found[0]["status"] == "committed" and \
            (found[0]["rows"], found[0]["charges"]) == (1, 1)

    lost = [rid for rid in ok if not charged_once(rid)]
    failed = {rid: s for rid, s in record.status.items() if s != 200}
    charged_failed = [f"{rid} answered {failed[rid]}" for rid in failed
                      if any(r["status"] == "committed" for r in holds.get(rid, []))]
    problems: Problems = {
        "REST: answered 200 but not charged exactly once (lost)": lost,
        **money_problems(rows, "REST"),
        "REST: charged though the client was answered an error": charged_failed,
        "REST: more than one hold for one request": [rid for rid, found in holds.items() if len(found) > 1],
        "REST: reservation of a request the client never sent": [
            f"{rid}: {[r['status'] for r in found]}" for rid, found in holds.items() if rid not in record.status],
        "REST: no answer (connection error)": [rid for rid, s in record.status.items() if s == 0],
        "REST: commits still in the outbox": [f"{n} pending"] if (n := outbox_count(inference)) else [],
        "REST: commits the authority refused for good": [f"{n} refused"] if (n := refused_count(inference)) else [],
    }
    figures = {
        "rest_requests": len(record.status),
        "rest_statuses": record.statuses(),
        "rest_200_billing_queued": len(record.queued),
        "rest_reservations": dict(sorted(Counter(r["status"] for r in rows).items())),
        "rest_charged": sum(1 for r in rows if r["status"] == "committed"),
        "rest_failed_hold_voided": sum(1 for rid in failed for r in holds.get(rid, [])
                                       if r["status"] in ("released", "expired")),
        "rest_lost": len(lost),
        "rest_charged_twice": sum(1 for r in rows if r["rows"] > 1 or r["charges"] > 1),
        "rest_charged_though_failed": len(charged_failed),
    }
    return figures, problems
