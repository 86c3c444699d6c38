"""Bearer-token authentication of authority callers, with roles per RPC.

Two kinds of token:

* static tokens, the operator's bootstrap: CREDIT_AUTH_TOKENS ("name:token:role+role,…") and/or a file
  in the same format, one entry a line; only SHA-256 digests are kept in memory. Checked first.
* platform credentials, kept in the database (credit_service/platforms.py): "cp_…" secrets, looked up
  by digest through a per-process cache whose entries live CREDIT_PLATFORM_CACHE_SECONDS, so that a
  created, rotated or revoked credential takes effect on every replica within that window. A platform
  caller carries a Scope: the organizations (and whether individual balances) it may act for.

The caller's name is what reservations are scoped to ("platform:<name>" for a platform credential).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import OUT_OF_SCOPE, PermissionDenied
from .model import PLATFORM_CALLER_PREFIX, PlatformGrant

PLATFORM_SECRET_PREFIX = "cp_"  # a platform credential's secret; other tokens are never looked up in the database
CACHE_ENTRIES = 10_000  # cached misses per process (least recently looked up dropped first)


class Role(enum.Enum):
    SPEND = "spend"  # the hot path
    ADMIN = "admin"  # CreditAdmin
    READ = "read"  # balances and usage
    MINT = "mint"  # the operator's: creates credits by hand (TopUpPool, GrantIndividualCredits), platform credentials
    PAYMENTS = "payments"  # relays payment-provider events (RecordCheckout, ApplyPaymentEvent)


@dataclass(frozen=True)
class Scope:
    """Whom a platform credential may act for: the organizations it names, and individual balances (users in
    no organization) only when `individuals`."""
    org_ids: frozenset[str]
    individuals: bool

    def allows(self, funding_kind: str, org_id: str | None) -> bool:
        return org_id in self.org_ids if funding_kind == "org" else self.individuals

    def require(self, funding_kind: str, org_id: str | None, user_id: str = "") -> None:
        """PERMISSION_DENIED (ErrorInfo OUT_OF_SCOPE) unless the funding is in scope."""
        if not self.allows(funding_kind, org_id):
            what = f"organization {org_id!r}" if funding_kind == "org" else "individual balances"
            raise PermissionDenied(f"this platform credential may not act for {what}"
                                   + (f" (user {user_id!r})" if user_id else ""), OUT_OF_SCOPE,
                                   {"funding": f"org:{org_id}" if funding_kind == "org" else "individual"})


@dataclass(frozen=True)
class Caller:
    name: str
    roles: frozenset[Role]
    scope: Scope | None = None  # None: a static token, unrestricted


def token_digest(token: str) -> bytes:
    """The stored and compared form of a token or secret (SHA-256)."""
    return hashlib.sha256(token.encode()).digest()


def parse_tokens(text: str) -> dict[bytes, Caller]:
    """Parses "name:token:role+role" entries separated by commas or newlines."""
    callers: dict[bytes, Caller] = {}
    for entry in text.replace("\n", ",").split(","):
        entry = entry.strip()
        if not entry or entry.startswith("#"):
            continue
        parts = entry.split(":")
        if len(parts) != 3 or not parts[0] or len(parts[1]) < 16:
            raise ValueError("auth token entries are name:token:role+role with a token of 16+ characters")
        name, token, roles = parts
        try:
            role_set = frozenset(Role(r.strip()) for r in roles.split("+") if r.strip())
        except ValueError as exc:
            raise ValueError(f"unknown role in auth token entry for {name!r}: {exc}") from None
        callers[token_digest(token)] = Caller(name, role_set)
    return callers


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def platform_caller(grant: PlatformGrant) -> Caller:
    return Caller(PLATFORM_CALLER_PREFIX + grant.name, frozenset(Role(r) for r in grant.roles),
                  Scope(frozenset(grant.org_ids), grant.individuals))


class LookupsExhausted(Exception):
    """Too many platform secrets never seen valid were looked up this second: refused without a query."""


class CredentialCache:
    """Platform callers by secret digest, each lookup kept `ttl` seconds (a secret in its rotation grace no
    longer than the grace), misses too; concurrent lookups of one digest share one query.

    A flood of made-up `cp_` secrets cannot turn into a flood of queries, nor push valid credentials out:
    a digest never seen valid is looked up only while a token bucket of `unknown_per_second` (burst: two
    seconds' worth) has a token, else LookupsExhausted (the caller answers UNAVAILABLE: retry); misses are
    kept in their own bounded LRU, apart from the valid digests, which are refreshed when their entry ends
    without taking a token."""

    def __init__(self, lookup: Callable[[bytes], Awaitable[PlatformGrant | None]], ttl: float,
                 unknown_per_second: float = 50.0):
        self._lookup = lookup
        self._ttl = ttl
        self._valid: dict[bytes, tuple[Caller, float]] = {}  # digests found valid: (caller, until)
        self._misses: OrderedDict[bytes, float] = OrderedDict()  # digests not found: until
        self._pending: dict[bytes, asyncio.Future[Caller | None]] = {}
        self._rate = unknown_per_second
        self._tokens = self._burst = max(unknown_per_second * 2, 1.0)
        self._filled_at = time.monotonic()

    def _take_token(self, now: float) -> bool:
        self._tokens = min(self._burst, self._tokens + (now - self._filled_at) * self._rate)
        self._filled_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    async def get(self, digest: bytes) -> Caller | None:
        now = time.monotonic()
        valid = self._valid.get(digest)
        if valid is not None and now < valid[1]:
            return valid[0]
        until = self._misses.get(digest)
        if until is not None and now < until:
            return None
        pending = self._pending.get(digest)
        if pending is None:
            if valid is None and not self._take_token(now):
                raise LookupsExhausted()
            pending = asyncio.ensure_future(self._load(digest))
            self._pending[digest] = pending
            pending.add_done_callback(lambda _: self._pending.pop(digest, None))
        return await asyncio.shield(pending)

    async def _load(self, digest: bytes) -> Caller | None:
        started = time.monotonic()
        grant = await self._lookup(digest)
        until = started + self._ttl
        if grant is None:
            self._valid.pop(digest, None)  # revoked, or its grace ended
            self._misses[digest] = until
            self._misses.move_to_end(digest)
            while len(self._misses) > CACHE_ENTRIES:
                self._misses.popitem(last=False)
            return None
        caller = platform_caller(grant)
        if grant.ms_left is not None:
            until = min(until, started + grant.ms_left / 1000)
        if digest not in self._valid and len(self._valid) >= CACHE_ENTRIES:
            self._valid.clear()  # more valid secrets than any deployment has: start over
        self._valid[digest] = (caller, until)
        return caller


class TokenAuthenticator:
    """Maps `authorization: Bearer <token>` metadata to a Caller: the static tokens first, then (when
    `platforms` is set) the platform credentials of the database."""

    def __init__(self, callers: dict[bytes, Caller], platforms: CredentialCache | None = None):
        self._callers = callers
        self.platforms = platforms

    @classmethod
    def from_settings(cls, tokens: str, tokens_file: str) -> TokenAuthenticator:
        text = tokens
        if tokens_file:
            text += "\n" + Path(tokens_file).read_text()
        return cls(parse_tokens(text))

    def authenticate(self, authorization: str | None) -> Caller | None:
        """A static token's caller, or None."""
        token = bearer_token(authorization)
        if token is None:
            return None
        digest = token_digest(token)
        # Digest lookup, then a constant-time comparison of the digests.
        for known, caller in self._callers.items():
            if hmac.compare_digest(known, digest):
                return caller
        return None

    async def authenticate_platform(self, authorization: str | None) -> Caller | None:
        """A platform credential's caller (through the cache), or None."""
        token = bearer_token(authorization)
        if self.platforms is None or token is None or not token.startswith(PLATFORM_SECRET_PREFIX):
            return None
        return await self.platforms.get(token_digest(token))
