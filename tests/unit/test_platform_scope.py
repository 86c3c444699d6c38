"""The parts of platform credentials no real race reaches on demand: a Reserve whose funding resolved to
an individual balance but whose hold landed on an org (the user joined one in between) is given back and
refused; the credential cache shares one lookup between concurrent callers and never trusts a rotated-out
secret past its grace. (Everything else runs against PostgreSQL and real authority processes:
tests/test_platform_credentials.py, tests/test_platform_rotation.py.)"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone
from typing import Any

import pytest

from credit_service.auth import CredentialCache, Scope
from credit_service.authority import CreditAuthority
from credit_service.errors import PermissionDenied
from credit_service.model import Balance, Hold, PlatformGrant


class JoinedInBetween:
    """Storage whose user resolves to an individual balance, then is held on an org (joined meanwhile)."""

    def __init__(self) -> None:
        self.reserved_with: dict[str, Any] = {}
        self.released: list[tuple[str, uuid.UUID, str]] = []
        self.hold = Hold(uuid.uuid4(), "org", "org-b", 100, 900, datetime.now(timezone.utc), False, "held", None)

    async def balance(self, user_id: str, org_id: str) -> Balance:
        return Balance("individual", None, 1_000, 0, 0)

    async def reserve(self, **kwargs: Any) -> Hold:
        self.reserved_with = kwargs
        return self.hold

    async def release(self, *, caller: str, reservation_id: uuid.UUID, reason: str) -> None:
        self.released.append((caller, reservation_id, reason))


async def test_a_hold_that_landed_outside_the_scope_is_released_and_refused():
    storage = JoinedInBetween()
    authority = CreditAuthority(storage)  # type: ignore[arg-type]
    with pytest.raises(PermissionDenied) as refused:
        await authority.reserve(caller="platform:p", request_id="r-1", user_id="u", org_id="", amount_mc=100,
                                ttl_seconds=0, service_type="", service_name="", metadata={},
                                scope=Scope(frozenset({"org-a"}), individuals=True))
    assert refused.value.reason == "OUT_OF_SCOPE"
    assert storage.reserved_with["org_id"] == ""  # resolved first: an individual balance, in scope
    assert storage.released == [("platform:p", storage.hold.reservation_id, "out of scope")]


async def test_concurrent_lookups_share_one_query_and_a_rotated_out_secret_is_not_cached_past_its_grace():
    calls = []

    async def lookup(digest: bytes) -> PlatformGrant | None:
        calls.append(digest)
        await asyncio.sleep(0.01)
        return PlatformGrant("p", ("org-a",), False, ("spend",), ms_left=50 if digest == b"old" else None)

    cache = CredentialCache(lookup, ttl=60)
    callers = await asyncio.gather(*(cache.get(b"new") for _ in range(20)))
    assert calls == [b"new"] and {c.name for c in callers} == {"platform:p"}
    assert callers[0].scope == Scope(frozenset({"org-a"}), False)
    await cache.get(b"old")
    await asyncio.sleep(0.08)  # past the old secret's 50 ms of grace, well within the 60 s cache
    await cache.get(b"old")
    await cache.get(b"new")
    assert calls == [b"new", b"old", b"old"]
