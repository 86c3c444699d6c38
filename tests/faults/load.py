"""A steady Reserve → Commit load over gRPC that records what the authority acknowledged.

Each worker retries UNAVAILABLE / DEADLINE_EXCEEDED with the *same* request
(request_id for Reserve, reservation_id for Commit), exactly as a careful
client does, so a lost answer never turns into a second charge.
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

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


@dataclass
class LoadRecord:
    acknowledged: dict[str, int] = field(default_factory=dict)  # reservation_id → charged
    reserved: set[str] = field(default_factory=set)
    given_up: int = 0  # operations abandoned after retries (holds left to expire)
    errors: Counter = field(default_factory=Counter)
    first_error_at: float | None = None
    last_error_at: float | None = None
    successes_after: list[float] = field(default_factory=list)

    def note_error(self, code: grpc.StatusCode) -> None:
        now = time.monotonic()
        self.errors[code.name] += 1
        self.first_error_at = self.first_error_at or now
        self.last_error_at = now


async def _retrying(call, request, metadata, record: LoadRecord, patience: float):
    deadline = time.monotonic() + patience
    while True:
        try:
            return await call(request, metadata=metadata, timeout=1.0)
        except grpc.aio.AioRpcError as error:
            record.note_error(error.code())
            if error.code() not in RETRYABLE or time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.05)


async def grpc_worker(addr: str, token: str, user_id: str, org_id: str, stop: asyncio.Event, record: LoadRecord,
                      *, ttl_seconds: int = 3, patience: float = 8.0) -> None:
    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(addr, options=[("grpc.max_reconnect_backoff_ms", 500)]) as channel:
        stub = authority_pb2_grpc.CreditAuthorityStub(channel)
        while not stop.is_set():
            request = authority_pb2.ReserveRequest(
                request_id=uuid.uuid4().hex, user_id=user_id, org_id=org_id, amount_millicredits=100,
                ttl_seconds=ttl_seconds, service_type="llm_inference", service_name="load")
            hold = await _retrying(stub.Reserve, request, metadata, record, patience)
            if hold is None:
                record.given_up += 1
                continue
            record.reserved.add(hold.reservation_id)
            amount = random.choice([0, 40, 100, 130])  # below, equal to and above the hold
            commit = authority_pb2.CommitRequest(reservation_id=hold.reservation_id, amount_millicredits=amount)
            done = await _retrying(stub.Commit, commit, metadata, record, patience)
            if done is None:
                record.given_up += 1
                continue
            assert done.charged_millicredits == amount
            record.acknowledged[hold.reservation_id] = amount
            record.successes_after.append(time.monotonic())


async def verify_acknowledged(db, record: LoadRecord) -> None:
    """Every acknowledged commit is in the database, charged once, with its amount."""
    if not record.acknowledged:
        return
    rows = await db.fetch(
        "SELECT reservation_id::text AS id, count(*) AS n, sum(credits_used) AS mc FROM usage_attribution "
        "WHERE reservation_id = ANY($1::uuid[]) GROUP BY 1", list(record.acknowledged))
    found = {r["id"]: (r["n"], r["mc"]) for r in rows}
    missing = set(record.acknowledged) - set(found)
    assert not missing, f"{len(missing)} acknowledged commits are missing"
    wrong = {rid: found[rid] for rid, amount in record.acknowledged.items() if found[rid] != (1, amount)}
    assert not wrong, f"charged twice or wrong amount: {list(wrong.items())[:5]}"
