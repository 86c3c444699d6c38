"""Async Python client of the credit authority, for any platform that bills LLM calls.

Billing one call is one block::

    from credit_client import CreditClient, InsufficientCredits

    async with CreditClient("127.0.0.1:50051", token) as credits:
        try:
            async with credits.hold(user_id="u1", org_id="acme", amount_millicredits=5_000,
                                    request_id=request_id, service_name="gpt-4o") as hold:
                answer = await call_the_model()               # raises → the hold is released
                hold.commit(cost_in_millicredits(answer), metadata={"tokens": answer.tokens})
        except InsufficientCredits as error:
            print(error.available, error.requested, error.funding)
        print(hold.result.charged_millicredits, hold.result.available_millicredits)

* ``hold(...)`` Reserves on enter (the block does not run when the credits do
  not fit), Commits on a clean exit, Releases when the block raises (the
  exception propagates unchanged).
* The amount committed is what ``hold.commit(amount)`` (or
  ``hold.actual_millicredits = amount``) set. **If nothing was set, the full
  hold is committed**: the block succeeded, so the usage happened and the
  worst-case estimate is the safe charge (the authority never undercharges).
  Call ``hold.release(reason)`` inside the block to void the hold instead
  (e.g. the answer came from a cache).
* UNAVAILABLE and DEADLINE_EXCEEDED (``RETRYABLE``) are retried with
  exponential backoff and jitter (:class:`RetryPolicy`). Retrying is safe:
  Reserve is idempotent per ``request_id`` (the same id is sent on every
  attempt), Commit and Release are idempotent per reservation. Other failures
  raise at once.
* Errors are :class:`CreditClientError` subclasses, one per row of the
  authority's error table; :class:`InsufficientCredits` carries ``available``,
  ``requested`` and ``funding`` from the ``google.rpc.ErrorInfo`` detail;
  :class:`RateLimited` (a rate limit, never insufficient credits) carries
  ``limit``, ``value``, ``scope``, ``window``, ``exceeds`` and ``retry_after``
  (seconds, from ``google.rpc.RetryInfo``). Pass ``api_key_id`` and
  ``estimated_tokens`` to ``reserve``/``hold`` and the real ``tokens`` to
  ``commit`` so the key's and the tokens-per-minute limits apply.
* Entering ``hold()`` with a ``request_id`` whose reservation is still held
  picks that hold up again (no second hold); with one that was already
  committed, released or expired it raises :class:`AlreadyFinalized`, so a
  re-run job does not bill twice.

Construct the client inside a running event loop (grpc.aio channels belong to
one loop); ``CreditClient.from_env()`` reads ``CREDIT_AUTHORITY_ADDR`` and
``CREDIT_SERVICE_TOKEN``.

Installed on its own with ``pip install ./clients/python`` (grpcio, grpcio-status and
protobuf; the stubs of ``credit.v1.CreditAuthority`` it needs ship in ``credit_client._proto``).
"""

from .client import Balance, Charge, CheckResult, CreditClient, Funding, Hold, Reservation
from .errors import (
    AlreadyExists,
    AlreadyFinalized,
    AuthorityUnavailable,
    CommitFailed,
    CreditClientError,
    FailedPrecondition,
    InsufficientCredits,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    error_from_rpc,
)
from .retry import RETRYABLE, RetryPolicy

__all__ = [
    "RETRYABLE", "AlreadyExists", "AlreadyFinalized", "AuthorityUnavailable", "Balance", "Charge", "CheckResult",
    "CommitFailed", "CreditClient", "CreditClientError", "FailedPrecondition", "Funding", "Hold",
    "InsufficientCredits", "InvalidArgument", "NotFound", "PermissionDenied", "RateLimited", "Reservation",
    "RetryPolicy",
    "Unauthenticated", "error_from_rpc",
]
