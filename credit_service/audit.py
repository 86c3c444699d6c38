"""The audit log's record of one administrative action, carried from the RPC layer to storage.

The gRPC layer (server/rpc.py) opens an `Entry` for every CreditAdmin RPC that changes something — who
called (the authenticated token or platform credential, the person it says it acts for, its address, the
request id), which RPC, and what it aims at — and makes it `current` while the method runs. Storage's
write transaction (storage/audit.py, `Queries.writing`) reads the target's administrative fields at its
start and before it commits, and appends the record in that same transaction: the change and its record
commit together or not at all. A method that succeeds without a write transaction (a replay that finds
everything done) still gets its record, written alone by the RPC layer, with before = after.

What a record never holds: a secret, a secret's digest, or an account's used/held (those move with
every call, not with administration).
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any


@dataclass
class Entry:
    action: str  # the RPC
    actor: str  # the token's name, or 'platform:<name>'
    actor_kind: str  # token | platform
    on_behalf_of: str  # what the caller says: the console's user, creditctl's OS user ('' when unsaid)
    request_id: str
    source: str  # the gRPC peer
    forwarded_for: str  # the client address the caller reports
    target_kind: str
    org_id: str | None
    target_id: str
    before: Any = None
    after: Any = None
    written: bool = False
    # set by storage once `before` has been read (a target named inside the transaction has none)
    opened: bool = False

    def aim(self, kind: str, org_id: str | None, target_id: str) -> None:
        """Names the target when only storage knows it (a new key's id, the purchase of a payment event)."""
        self.target_kind, self.org_id, self.target_id = kind, org_id or None, target_id


current: contextvars.ContextVar[Entry | None] = contextvars.ContextVar("audit_entry", default=None)


def aim(kind: str, org_id: str | None, target_id: str) -> None:
    """Names the current action's target (no-op outside an audited RPC)."""
    entry = current.get()
    if entry is not None and not entry.written:
        entry.aim(kind, org_id, target_id)


# Metadata a trusted caller may send with an administrative RPC; recorded as its claim.
ON_BEHALF_OF = "x-on-behalf-of"
FORWARDED_FOR = "x-forwarded-for"
MAX_CLAIM = 200  # characters kept of either claim
