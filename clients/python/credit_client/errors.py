"""The client's errors: one :class:`CreditClientError` subclass per row of the authority's error table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from .retry import RETRYABLE as RETRYABLE  # defined with the retry policy; importable from here too

if TYPE_CHECKING:
    from .client import Reservation


# ---- errors ----------------------------------------------------------------


class CreditClientError(Exception):
    """A call to the authority failed; ``code`` is the gRPC status, ``message`` its text."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.message = message
        self.code = code


class InvalidArgument(CreditClientError):
    """INVALID_ARGUMENT; ``field_violations`` lists ``(field, description)`` from google.rpc.BadRequest."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None,
                 field_violations: list[tuple[str, str]] | None = None):
        super().__init__(message, code)
        self.field_violations = field_violations or []


class Unauthenticated(CreditClientError):
    """No token or an invalid one."""


class PermissionDenied(CreditClientError):
    """Wrong role for the RPC, or the user is not a member of the named org."""


class NotFound(CreditClientError):
    """Unknown user, organization or reservation."""


class AlreadyExists(CreditClientError):
    """The ``request_id`` was used before with other arguments."""


class FailedPrecondition(CreditClientError):
    """The reservation is already finalized (e.g. Release after Commit)."""


class AlreadyFinalized(FailedPrecondition):
    """``hold()`` was entered with a ``request_id`` whose reservation is no longer held.

    ``status`` is "committed", "released" or "expired"; ``reservation_id`` is the
    earlier reservation. Nothing new was reserved and nothing will be charged.
    """

    def __init__(self, request_id: str, reservation: Reservation):
        super().__init__(f"request_id {request_id!r} was already used: its reservation "
                         f"{reservation.reservation_id} is {reservation.status}; use a new request_id",
                         grpc.StatusCode.FAILED_PRECONDITION)
        self.request_id = request_id
        self.reservation_id = reservation.reservation_id
        self.status = reservation.status


class InsufficientCredits(CreditClientError):
    """RESOURCE_EXHAUSTED: ``requested`` millicredits do not fit in ``available`` on ``funding``
    ("org:<org_id>" or "individual")."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None, *, available: int = 0,
                 requested: int = 0, funding: str = ""):
        super().__init__(message, code)
        self.available = available
        self.requested = requested
        self.funding = funding


class RateLimited(CreditClientError):
    """RESOURCE_EXHAUSTED with ErrorInfo reason RATE_LIMITED: a rate limit refused the Reserve (nothing held).

    ``limit`` is "requests_per_minute", "tokens_per_minute", "max_parallel", "credits_per_day" or
    "credits_per_month"; ``value`` its setting; ``scope`` "org", "member", "key" or "individual";
    ``window`` "minute", "parallel", "day" or "month". ``retry_after`` is the delay (seconds, from
    google.rpc.RetryInfo) after which the same request passes, None when ``exceeds``: the request alone is
    larger than the limit and waiting does not help. Never raised for insufficient credits.
    """

    def __init__(self, message: str, code: grpc.StatusCode | None = None, *, limit: str = "", value: int = 0,
                 scope: str = "", window: str = "", retry_after: float | None = None, exceeds: bool = False):
        super().__init__(message, code)
        self.limit = limit
        self.value = value
        self.scope = scope
        self.window = window
        self.retry_after = retry_after
        self.exceeds = exceeds


class AuthorityUnavailable(CreditClientError):
    """UNAVAILABLE or DEADLINE_EXCEEDED after every retry: fail closed (do not call the model)."""


class CommitFailed(CreditClientError):
    """The block succeeded but its Commit did not land (the cause is ``__cause__``).

    The usage happened: retry later with ``client.commit(reservation_id, amount_millicredits)``
    (idempotent; a Commit after the hold expired is still charged, flagged late).
    """

    def __init__(self, cause: CreditClientError, reservation_id: str, amount_millicredits: int):
        super().__init__(f"commit of {amount_millicredits} millicredits to reservation {reservation_id} "
                         f"failed: {cause.message}", cause.code)
        self.reservation_id = reservation_id
        self.amount_millicredits = amount_millicredits


_ERRORS: dict[grpc.StatusCode, type[CreditClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: InsufficientCredits,
    grpc.StatusCode.UNAVAILABLE: AuthorityUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: AuthorityUnavailable,
}


def _details(error: grpc.aio.AioRpcError) -> list[Any]:
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # a status detail that does not match the status line
        return []
    return list(status.details) if status is not None else []


def _exhausted(error: grpc.aio.AioRpcError, message: str) -> CreditClientError:
    """RESOURCE_EXHAUSTED, told apart by the ErrorInfo reason: RATE_LIMITED or insufficient credits."""
    code = error.code()
    reason, meta, retry_after = "", {}, None
    for detail in _details(error):
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, meta = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.ToMilliseconds() / 1000
    if reason == "RATE_LIMITED":
        return RateLimited(message, code, limit=meta.get("limit", ""), value=int(meta.get("value") or 0),
                           scope=meta.get("scope", ""), window=meta.get("window", ""), retry_after=retry_after,
                           exceeds=meta.get("exceeds") == "true")
    return InsufficientCredits(message, code, available=int(meta.get("available", "0")),
                               requested=int(meta.get("requested", "0")), funding=meta.get("funding", ""))


def error_from_rpc(error: grpc.aio.AioRpcError) -> CreditClientError:
    """Maps a failed call to the matching :class:`CreditClientError`, with its details parsed."""
    code = error.code()
    message = error.details() or code.name
    cls = _ERRORS.get(code, CreditClientError)
    if cls is InsufficientCredits:
        return _exhausted(error, message)
    if cls is InvalidArgument:
        violations = []
        for detail in _details(error):
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations += [(v.field, v.description) for v in bad.field_violations]
        return InvalidArgument(message, code, violations)
    return cls(message, code)
