"""The hot path: Check (balance), Reserve, Commit, Release, and hold expiry.

Each operation is one round trip to a server-side function of migrations/functions/:
alone through its single-call function (credit_reserve_op, credit_commit,
credit_release) when nothing else is in flight, else in the next group-commit batch
(credit_batch). Both paths answer in one shape, `HotRow`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import asyncpg

from .. import metrics
from ..errors import AlreadyExists, FailedPrecondition, InsufficientCredits, NotFound, RateLimited
from ..model import Balance, Charge, Hold, funding_label
from .batcher import HotPathBatcher
from .common import Queries, past_largest_total, raise_resolution


class HotOp(NamedTuple):
    """One operation of a batch: credit_batch's arguments are these fields, column by column."""
    kind: str  # 'reserve' | 'commit' | 'release'
    caller: str
    request_id: str | None = None
    request_hash: bytes | None = None
    user_id: str | None = None
    org_id: str | None = None
    amount_mc: int | None = None
    ttl_seconds: int | None = None
    service_type: str | None = None
    service_name: str | None = None
    metadata: dict[str, Any] | None = None
    reservation_id: uuid.UUID | None = None
    reason: str | None = None
    api_key_id: str | None = None
    tokens: int | None = None  # estimated (reserve) or real (commit; None: the estimate stands)


BATCH_SQL = "SELECT * FROM credit_batch(" + ", ".join(f"${i}" for i in range(1, len(HotOp._fields) + 1)) + ")"

# The single-call functions, their columns named as credit_batch names them.
RESERVE_SQL = """SELECT outcome, reservation_id, funding_kind, org_id, reserved_mc AS amount_mc, available_mc,
                        expires_at, status, limit_info, limit_status
                   FROM credit_reserve_op($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"""
COMMIT_SQL = """SELECT outcome, charged_mc AS amount_mc, available_mc, overrun, late, funding_kind, org_id
                  FROM credit_commit($1, $2, $3, $4, $5)"""
RELEASE_SQL = "SELECT credit_release($1, $2, $3) AS outcome"


@dataclass(frozen=True)
class HotRow:
    """A hot-path answer, whichever path ran it. amount_mc: the hold (Reserve) or the charge (Commit).
    Which fields are set depends on the operation and its outcome (NULL in SQL, None here): an "ok"
    Reserve sets the hold's, an "ok" Commit the charge's, a refusal only what explains it."""
    outcome: str
    batched: bool
    reservation_id: Any = None  # uuid.UUID
    funding_kind: Any = None  # str
    org_id: str | None = None
    amount_mc: Any = None  # int
    available_mc: Any = None  # int
    expires_at: Any = None  # datetime
    status: Any = None  # str
    overrun: Any = None  # bool
    late: Any = None  # bool
    limit_info: Any = None  # dict: a Reserve's refusal ('rate_limited')
    limit_status: Any = None  # list: what is left of a granted Reserve's per-minute limits (credit_limit_try)

    @classmethod
    def of(cls, row: Mapping[str, Any], batched: bool) -> HotRow:
        return cls(batched=batched, **{name: row[name] for name in row.keys() if name != "idx"})


async def run_batch(pool: asyncpg.Pool, operations: Sequence[HotOp]) -> list[asyncpg.Record]:
    """One credit_batch transaction for the operations, passed as one array per field."""
    return await pool.fetch(BATCH_SQL, *zip(*operations, strict=True))


def limits_left(status: Sequence[int | None] | None) -> dict[str, list[int]] | None:
    """credit_limit_try's status array ([requests limit, remaining, reset ms, the same for tokens], NULL where
    no such limit applied) as Hold.limits: {"requests": [limit, remaining, reset_ms], "tokens": [...]}."""
    if not status:
        return None
    limits = {kind: [int(v or 0) for v in status[i:i + 3]] for kind, i in (("requests", 0), ("tokens", 3))
              if status[i] is not None}
    return limits or None


class HotPathQueries(Queries):
    def __init__(self, pool: asyncpg.Pool, batcher: HotPathBatcher[HotOp] | None = None,
                 read_pool: asyncpg.Pool | None = None, read_timeout_seconds: float = 0):
        super().__init__(pool, read_pool, read_timeout_seconds)
        self.batcher = batcher

    async def balance(self, user_id: str, org_id: str) -> Balance:
        row = await self.pool.fetchrow("SELECT * FROM credit_balance($1, $2)", user_id, org_id)
        raise_resolution(row["outcome"], user_id, org_id)
        return Balance(row["funding_kind"], row["org_id"], row["limit_mc"], row["used_mc"], row["held_mc"])

    async def _run(self, operation: HotOp, sql: str, *args: Any) -> HotRow:
        """Runs one operation: in the next batch when others are queued or in flight, else alone."""
        if self.batcher is not None and not self.batcher.claim_direct():
            return HotRow.of(await self.batcher.run(operation), batched=True)
        try:
            return HotRow.of(await self.pool.fetchrow(sql, *args), batched=False)
        finally:
            if self.batcher is not None:
                self.batcher.release_direct()

    async def reserve(self, *, caller: str, request_id: str, request_hash: bytes, user_id: str,
                      org_id: str, amount_mc: int, ttl_seconds: int, service_type: str,
                      service_name: str, metadata: dict[str, Any], api_key_id: str = "", tokens: int = 0) -> Hold:
        operation = HotOp("reserve", caller, request_id, request_hash, user_id, org_id, amount_mc, ttl_seconds,
                          service_type, service_name, metadata, api_key_id=api_key_id, tokens=tokens)
        for _ in range(5):
            row = await self._run(operation, RESERVE_SQL, caller, request_id, request_hash, user_id, org_id,
                                  amount_mc, ttl_seconds, service_type, service_name, metadata, api_key_id, tokens)
            if row.outcome != "retry":  # "retry": a concurrent Reserve with this request_id won the race
                break
            metrics.RESERVE_RETRIES.labels("batch" if row.batched else "single").inc()
        else:  # pragma: no cover - a duplicate that never settles
            raise FailedPrecondition(f"request_id {request_id!r} is being reserved concurrently; retry")
        raise_resolution(row.outcome, user_id, org_id)
        if row.outcome == "conflict":
            raise AlreadyExists(f"request_id {request_id!r} was already used with different arguments")
        if row.outcome == "insufficient":
            raise InsufficientCredits(row.available_mc or 0, amount_mc, funding_label(row.funding_kind, row.org_id))
        if row.outcome == "rate_limited":
            raise RateLimited.of(row.limit_info)
        return Hold(row.reservation_id, row.funding_kind, row.org_id, row.amount_mc, row.available_mc or 0,
                    row.expires_at, row.outcome == "replay", row.status, limits_left(row.limit_status))

    async def commit(self, *, caller: str, reservation_id: uuid.UUID, amount_mc: int,
                     metadata: dict[str, Any], tokens: int | None = None) -> Charge:
        row = await self._run(HotOp("commit", caller, amount_mc=amount_mc, metadata=metadata,
                                    reservation_id=reservation_id, tokens=tokens),
                              COMMIT_SQL, caller, reservation_id, amount_mc, metadata, tokens)
        if row.outcome == "not_found":
            raise NotFound(f"reservation {reservation_id} not found")
        if row.outcome == "out_of_range":
            raise past_largest_total(f"the used credits of reservation {reservation_id}'s account")
        if row.outcome == "finalized":
            raise FailedPrecondition(
                f"reservation {reservation_id} is already finalized"
                + (f" (committed {row.amount_mc} millicredits)" if row.amount_mc is not None else " (released)"))
        return Charge(row.amount_mc, row.available_mc, row.overrun, row.late, row.funding_kind, row.org_id)

    async def release(self, *, caller: str, reservation_id: uuid.UUID, reason: str) -> None:
        row = await self._run(HotOp("release", caller, reservation_id=reservation_id, reason=reason),
                              RELEASE_SQL, caller, reservation_id, reason)
        if row.outcome == "not_found":
            raise NotFound(f"reservation {reservation_id} not found")
        if row.outcome == "finalized":
            raise FailedPrecondition(f"reservation {reservation_id} is already committed")

    async def outstanding_holds(self) -> tuple[int, int]:
        row = await self.pool.fetchrow(
            "SELECT count(*) AS n, coalesce(sum(amount_mc), 0)::BIGINT AS mc FROM reservations WHERE status = 'held'")
        return row["n"], row["mc"]

    async def expire_holds(self, batch: int) -> int:
        return await self.pool.fetchval("SELECT credit_expire_holds($1)", batch)
