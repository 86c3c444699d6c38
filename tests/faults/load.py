"""A steady Reserve → Commit load over gRPC that records what the authority answered, and the
reconciliation of that record with the database, both ways.

Each worker retries UNAVAILABLE / DEADLINE_EXCEEDED with the *same* request
(request_id for Reserve, reservation_id for Commit), exactly as a careful
client does, so a lost answer never turns into a second charge. A call still
unanswered after `patience` seconds is abandoned: its outcome is *unknown* to
this client (it may have landed), never taken as a failure. Any other error is a
*refusal*: the client was told the call failed.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import grpc

from credit.v1 import authority_pb2, authority_pb2_grpc
from credit_client import RETRYABLE

Problems = dict[str, list[str]]


@dataclass
class LoadRecord:
    requests: set[str] = field(default_factory=set)  # every Reserve request_id sent
    reserved: set[str] = field(default_factory=set)  # reservation ids of the holds answered OK
    commits_sent: dict[str, int] = field(default_factory=dict)  # reservation_id → amount sent in its Commit
    acknowledged: dict[str, int] = field(default_factory=dict)  # reservation_id → charged, as answered OK
    retried: Counter = field(default_factory=Counter)  # "reserve" / "commit" answered OK after ≥ 1 retry
    abandoned_reserves: set[str] = field(default_factory=set)  # request ids still unanswered after patience
    abandoned_commits: set[str] = field(default_factory=set)  # reservation ids likewise (outcome unknown)
    refused_reserves: dict[str, str] = field(default_factory=dict)  # request_id → non-retryable code
    refused_commits: dict[str, str] = field(default_factory=dict)  # reservation_id → non-retryable code
    misanswered: list[str] = field(default_factory=list)  # Commits answered OK with another amount
    errors: Counter = field(default_factory=Counter)  # every error answer, by code
    successes_after: list[float] = field(default_factory=list)  # monotonic time of each acknowledged commit
    at_gate: int = 0  # workers waiting for the test to let their next call go

    @property
    def given_up(self) -> int:
        return len(self.abandoned_reserves) + len(self.abandoned_commits)

    @property
    def refused(self) -> int:
        return len(self.refused_reserves) + len(self.refused_commits)


async def _call(call, request, metadata, record: LoadRecord, patience: float, gate: asyncio.Event | None):
    """(answer, None, retries), or (None, last error code, retries) when refused or abandoned.
    Every attempt waits for `gate`, when given: the test holds the clients' calls and lets them go at once."""
    deadline = time.monotonic() + patience
    retries = 0
    while True:
        if gate is not None and not gate.is_set():
            record.at_gate += 1
            await gate.wait()
            record.at_gate -= 1
        try:
            return await call(request, metadata=metadata, timeout=1.0), None, retries
        except grpc.aio.AioRpcError as error:
            record.errors[error.code().name] += 1
            if error.code() not in RETRYABLE or time.monotonic() > deadline:
                return None, error.code(), retries
            retries += 1
            await asyncio.sleep(0.05)


async def grpc_worker(addr: str, token: str, user_id: str, org_id: str, stop: asyncio.Event, record: LoadRecord,
                      *, ttl_seconds: int = 3, patience: float = 8.0, gate: asyncio.Event | None = None) -> None:
    async with grpc.aio.insecure_channel(addr, options=[("grpc.max_reconnect_backoff_ms", 500)]) as channel:
        stub = authority_pb2_grpc.CreditAuthorityStub(channel)
        while not stop.is_set():
            request_id = uuid.uuid4().hex
            # The authority logs the request id of each call it serves (its access log).
            metadata = (("authorization", f"Bearer {token}"), ("x-request-id", request_id))
            request = authority_pb2.ReserveRequest(
                request_id=request_id, user_id=user_id, org_id=org_id, amount_millicredits=100,
                ttl_seconds=ttl_seconds, service_type="llm_inference", service_name="load")
            record.requests.add(request_id)
            hold, code, retries = await _call(stub.Reserve, request, metadata, record, patience, gate)
            if hold is None:
                if code in RETRYABLE:
                    record.abandoned_reserves.add(request_id)
                else:
                    record.refused_reserves[request_id] = code.name
                await asyncio.sleep(0.05)
                continue
            record.retried["reserve"] += retries > 0
            record.reserved.add(hold.reservation_id)
            amount = random.choice([0, 40, 100, 130])  # below, equal to and above the hold
            commit = authority_pb2.CommitRequest(reservation_id=hold.reservation_id, amount_millicredits=amount)
            record.commits_sent[hold.reservation_id] = amount
            done, code, retries = await _call(stub.Commit, commit, metadata, record, patience, gate)
            if done is None:
                if code in RETRYABLE:
                    record.abandoned_commits.add(hold.reservation_id)
                else:
                    record.refused_commits[hold.reservation_id] = code.name
                await asyncio.sleep(0.05)
                continue
            record.retried["commit"] += retries > 0
            if done.charged_millicredits != amount:
                record.misanswered.append(f"{hold.reservation_id}: sent {amount}, answered "
                                          f"{done.charged_millicredits}")
            record.acknowledged[hold.reservation_id] = done.charged_millicredits
            record.successes_after.append(time.monotonic())


# Every reservation of the load's user, with its attribution rows and ledger charge entries.
RESERVATIONS = """
    SELECT r.reservation_id::text AS id, r.request_id, r.status, r.charged_mc,
           (SELECT count(*) FROM usage_attribution u WHERE u.reservation_id = r.reservation_id) AS rows,
           (SELECT coalesce(sum(u.credits_used), 0)::bigint FROM usage_attribution u
             WHERE u.reservation_id = r.reservation_id) AS rows_mc,
           (SELECT count(*) FROM ledger_entries l
             WHERE l.reservation_id = r.reservation_id AND l.kind = 'charge') AS charges
      FROM reservations r WHERE r.user_id = $1"""


def money_problems(rows: list, label: str) -> Problems:
    """What the database must show for any reservation, whoever asked for it."""
    return {
        f"{label}: charged twice (more than one attribution row or ledger charge)": [
            f"{r['id']} rows={r['rows']} charges={r['charges']}" for r in rows if r["rows"] > 1 or r["charges"] > 1],
        f"{label}: committed without exactly one attribution row and ledger charge of its amount": [
            f"{r['id']} rows={r['rows']} charges={r['charges']} charged={r['charged_mc']} rows_mc={r['rows_mc']}"
            for r in rows if r["status"] == "committed"
            and (r["rows"], r["charges"], r["rows_mc"]) != (1, 1, r["charged_mc"])],
        f"{label}: attribution row or charge without a committed reservation": [
            f"{r['id']} {r['status']} rows={r['rows']} charges={r['charges']}"
            for r in rows if r["status"] != "committed" and (r["rows"] or r["charges"])],
        f"{label}: hold still held": [r["id"] for r in rows if r["status"] == "held"],
    }


async def reconcile(db, record: LoadRecord, user_id: str) -> tuple[dict, Problems]:
    """The load's record against the database, both ways: (figures, problems by name)."""
    rows = await db.fetch(RESERVATIONS, user_id)
    by_id = {r["id"]: r for r in rows}
    committed = {r["id"]: r for r in rows if r["status"] == "committed"}
    by_request = {r["request_id"]: r for r in rows}

    def charged_as(rid: str, amount: int) -> bool:
        r = by_id.get(rid)
        return r is not None and r["status"] == "committed" and r["charged_mc"] == amount and \
            (r["rows"], r["charges"], r["rows_mc"]) == (1, 1, amount)

    lost = [f"{rid} answered {amount}: {dict(by_id[rid]) if rid in by_id else 'no reservation'}"
            for rid, amount in record.acknowledged.items() if not charged_as(rid, amount)]
    problems: Problems = {
        "gRPC: acknowledged commit not charged exactly once with its amount (lost)": lost,
        **money_problems(rows, "gRPC"),
        "gRPC: charged though the client never sent its Commit": [
            rid for rid in committed if rid not in record.commits_sent],
        "gRPC: charged another amount than the Commit sent": [
            f"{rid} sent={record.commits_sent[rid]} charged={r['charged_mc']}"
            for rid, r in committed.items()
            if rid in record.commits_sent and r["charged_mc"] != record.commits_sent[rid]],
        "gRPC: charged though the client was told the Commit failed": [
            f"{rid} ({code})" for rid, code in record.refused_commits.items() if rid in committed],
        "gRPC: answered a non-retryable error": [
            f"Reserve {rid}: {code}" for rid, code in record.refused_reserves.items()] + [
            f"Commit {rid}: {code}" for rid, code in record.refused_commits.items()],
        "gRPC: Commit answered OK with another amount": record.misanswered,
        "gRPC: acknowledged hold missing from the database": [rid for rid in record.reserved if rid not in by_id],
        "gRPC: reservation with a request id the client never sent": [
            f"{r['request_id']} {r['status']}" for r in rows if r["request_id"] not in record.requests],
        "gRPC: abandoned Reserve committed (the client never committed it)": [
            rid for rid in record.abandoned_reserves
            if rid in by_request and by_request[rid]["status"] == "committed"],
    }
    landed = [rid for rid in record.abandoned_commits if rid in committed]
    figures = {
        "grpc_reserves_sent": len(record.requests),
        "grpc_holds_acknowledged": len(record.reserved),
        "grpc_commits_acknowledged": len(record.acknowledged),
        "grpc_reserves_retried": record.retried["reserve"],
        "grpc_commits_retried": record.retried["commit"],
        "grpc_errors": dict(sorted(record.errors.items())),
        "grpc_refused": record.refused,
        "grpc_gave_up_reserve": len(record.abandoned_reserves),
        "grpc_gave_up_reserve_landed": sum(1 for rid in record.abandoned_reserves if rid in by_request),
        "grpc_gave_up_commit": len(record.abandoned_commits),
        "grpc_gave_up_commit_landed": len(landed),
        "grpc_reservations": dict(sorted(Counter(r["status"] for r in rows).items())),
        "grpc_committed": len(committed),
        "grpc_lost": len(lost),
        "grpc_charged_twice": sum(1 for r in rows if r["rows"] > 1 or r["charges"] > 1),
        "grpc_charged_unacknowledged": sum(1 for rid in committed if rid not in record.acknowledged),
    }
    return figures, problems


def failure_text(problems: Problems) -> str:
    """Counts and five examples per failed check ("" when none failed)."""
    lines = []
    for name, found in problems.items():
        if found:
            lines.append(f"{name}: {len(found)}")
            lines += [f"    {example}" for example in found[:5]]
    return "\n".join(lines)
