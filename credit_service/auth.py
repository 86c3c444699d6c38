"""Bearer-token authentication of authority callers, with roles per RPC.

Tokens come from CREDIT_AUTH_TOKENS ("name:token:role+role,…") and/or a file
in the same format, one entry a line. Only SHA-256 digests of the tokens are
kept in memory; the caller's name is what reservations are scoped to.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path


class Role(enum.Enum):
    SPEND = "spend"  # the hot path
    ADMIN = "admin"  # CreditAdmin
    READ = "read"  # balances and usage
    MINT = "mint"  # creates credits by hand: an operator's TopUpPool and GrantIndividualCredits
    PAYMENTS = "payments"  # relays payment-provider events (RecordCheckout, ApplyPaymentEvent)


@dataclass(frozen=True)
class Caller:
    name: str
    roles: frozenset[Role]


def _digest(token: str) -> bytes:
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
        callers[_digest(token)] = Caller(name, role_set)
    return callers


class TokenAuthenticator:
    """Maps `authorization: Bearer <token>` metadata to a Caller."""

    def __init__(self, callers: dict[bytes, Caller]):
        self._callers = callers

    @classmethod
    def from_settings(cls, tokens: str, tokens_file: str) -> TokenAuthenticator:
        text = tokens
        if tokens_file:
            text += "\n" + Path(tokens_file).read_text()
        return cls(parse_tokens(text))

    def authenticate(self, authorization: str | None) -> Caller | None:
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        digest = _digest(token.strip())
        # Digest lookup, then a constant-time comparison of the digests.
        for known, caller in self._callers.items():
            if hmac.compare_digest(known, digest):
                return caller
        return None
