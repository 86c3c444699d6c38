"""Who the REST service acts for, told to the credit authority with each CreditAdmin call so that its audit
log names the person behind the service's token (credit_service/audit.py).

Two context variables of the REST call being served, next to credit_service.logs.request_id:

* `on_behalf_of` — who is acting: "user:<user_id> (api_key ck_…)", "user:<user_id> (session)",
  "user:<user_id> (access_token)" (an org service key: "(service_key ck_…)"), or the user a first SSO sign-in
  creates; empty until the caller is known.
* `forwarded_for` — the client's address as this service saw it (the TCP peer, `request.client.host`: no
  X-Forwarded-For header is trusted, as this service has no trusted-proxy setting).

`begin` sets them where a request's caller is about to be authenticated (the API-key `caller` dependency,
the console's `viewer`, the SSO callback) and `act_for` once it is known. AuthorityClient sends them as
x-on-behalf-of / x-forwarded-for metadata on CreditAdmin calls only, never on the hot path's
Reserve/Commit/Release. Each value is a claim the authority records as such: at most 200 characters of
printable ASCII (control characters dropped, anything else escaped), as gRPC metadata must be.
"""

from __future__ import annotations

import contextvars

from fastapi import Request

MAX_CLAIM = 200  # the authority keeps no more (credit_service.audit.MAX_CLAIM)
ON_BEHALF_OF = "x-on-behalf-of"
FORWARDED_FOR = "x-forwarded-for"

on_behalf_of: contextvars.ContextVar[str] = contextvars.ContextVar("on_behalf_of", default="")
forwarded_for: contextvars.ContextVar[str] = contextvars.ContextVar("forwarded_for", default="")


def clean(value: str) -> str:
    """A metadata value: control characters (C0, DEL, C1) dropped, other non-ASCII as \\u escapes, at most
    MAX_CLAIM characters."""
    kept = "".join(ch for ch in value if not (ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F))
    return kept.encode("ascii", "backslashreplace").decode("ascii")[:MAX_CLAIM].strip()


def begin(request: Request) -> None:
    """A request whose caller is about to be authenticated: its address; nobody acting yet."""
    forwarded_for.set(clean(request.client.host) if request.client else "")
    on_behalf_of.set("")


def describe(user_id: str, signed_in_with: str, key_id: str = "", service_key: bool = False) -> str:
    """"user:<user_id> (<how>)": the key's id for an API key, else how they signed in."""
    how = signed_in_with
    if key_id:
        how = f"{'service_key' if service_key else 'api_key'} {key_id}"
    return f"user:{user_id} ({how})"


def act_for(user_id: str, signed_in_with: str, key_id: str = "", service_key: bool = False) -> None:
    on_behalf_of.set(clean(describe(user_id, signed_in_with, key_id, service_key)))


def metadata() -> tuple[tuple[str, str], ...]:
    """x-on-behalf-of and x-forwarded-for, those that are set."""
    return tuple((name, value) for name, value in ((ON_BEHALF_OF, on_behalf_of.get()),
                                                    (FORWARDED_FOR, forwarded_for.get())) if value)
