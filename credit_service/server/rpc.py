"""The gRPC layer's rules for every RPC: authenticate the bearer token, check the role, map domain
errors to statuses with google.rpc details (ErrorInfo, BadRequest), fail closed when the database
is down, and record the call (metrics, access log)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from .. import audit, logs, metrics
from ..auth import Caller, LookupsExhausted, Role, TokenAuthenticator
from ..authority import CreditAuthority
from ..errors import (
    INSUFFICIENT_CREDITS,
    OUT_OF_SCOPE,
    ROLE_REQUIRED,
    AlreadyExists,
    CreditError,
    FailedPrecondition,
    InsufficientCredits,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RateLimited,
    ReadTimeout,
    Unavailable,
)

log = logging.getLogger("credit_service")

ERROR_DOMAIN = "credit.v1"
MAX_MESSAGE_BYTES = 1024 * 1024

# Raised by asyncpg or the socket when PostgreSQL cannot be reached: fail closed.
DATABASE_DOWN = (OSError, ConnectionError, asyncio.TimeoutError, asyncpg.PostgresConnectionError,
                 asyncpg.InterfaceError, asyncpg.CannotConnectNowError, asyncpg.OperatorInterventionError,
                 asyncpg.InsufficientResourcesError, asyncpg.exceptions._base.InternalClientError)

_STATUS = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    InsufficientCredits: grpc.StatusCode.RESOURCE_EXHAUSTED,
    RateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ReadTimeout: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def _rich_status(code: grpc.StatusCode, message: str, *details: Any) -> grpc.Status:
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
    for detail in details:
        if detail is not None:
            packed = any_pb2.Any()
            packed.Pack(detail)
            status.details.append(packed)
    return rpc_status.to_status(status)


def status_for(error: CreditError) -> grpc.Status:
    code = _STATUS.get(type(error), grpc.StatusCode.INTERNAL)
    detail: Any = None
    if isinstance(error, InvalidArgument):
        detail = error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=error.field, description=error.description)])
    elif isinstance(error, InsufficientCredits):
        detail = error_details_pb2.ErrorInfo(
            reason=INSUFFICIENT_CREDITS, domain=ERROR_DOMAIN,
            metadata={"available": str(error.available), "requested": str(error.requested),
                      "funding": error.funding})
    elif error.reason:
        detail = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.details)
    retry = None
    if isinstance(error, RateLimited) and not error.exceeds:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(error.retry_after_ms)
    return _rich_status(code, error.message, detail, retry)


# What an RPC open to platform credentials names as the funding a request acts for: (kind, org_id).
ScopeOf = Callable[[Any], tuple[str, str | None]]
IN_METHOD: ScopeOf = lambda request: ("", None)  # noqa: E731 - marker: the method checks caller.scope itself


def org_of(request: Any) -> tuple[str, str | None]:
    return "org", request.org_id


def account_of(request: Any) -> tuple[str, str | None]:
    """An AccountRef's funding: an org's pool or allocation, else an individual balance."""
    return ("org", request.account.org_id) if request.account.org_id else ("individual", None)


def out_of_scope(caller: Caller, request: Any, name: str, scope: ScopeOf | None) -> CreditError | None:
    """Why a platform credential may not make this call, or None (also for static tokens)."""
    if caller.scope is None or scope is IN_METHOD:
        return None
    if scope is None:
        return PermissionDenied(f"{name} is not open to platform credentials", OUT_OF_SCOPE, {"rpc": name})
    kind, org_id = scope(request)
    try:
        caller.scope.require(kind, org_id)
    except PermissionDenied as error:
        return error
    return None


@dataclass(frozen=True)
class Audited:
    """An RPC that changes something: each call that succeeds appends one audit record (credit_service/audit.py)
    aimed at a `kind` of target, in the request's org (`org`) with the id `target` (either may be left to
    storage, which names what only it knows: a new key's id, a payment event's purchase)."""
    kind: str
    org: Callable[[Any], str] = lambda request: ""
    target: Callable[[Any], str] = lambda request: ""


# The marker of an RPC that changes nothing an audit record would hold (reads; VerifyApiKey).
NOT_A_CHANGE = Audited("")


def audit_entry(spec: Audited, name: str, caller: Caller, request: Any, metadata: dict[str, str],
                context: grpc.aio.ServicerContext) -> audit.Entry:
    """The audit record of this call, filled in by storage (before/after) as the change commits."""
    return audit.Entry(
        action=name, actor=caller.name, actor_kind="token" if caller.scope is None else "platform",
        on_behalf_of=metadata.get(audit.ON_BEHALF_OF, "")[:audit.MAX_CLAIM],
        request_id=metadata.get("x-request-id", "")[:audit.MAX_CLAIM], source=context.peer() or "",
        forwarded_for=metadata.get(audit.FORWARDED_FOR, "")[:audit.MAX_CLAIM],
        target_kind=spec.kind, org_id=spec.org(request) or None, target_id=spec.target(request))


async def run_audited(servicer: Servicer, call: Awaitable[Any], entry: audit.Entry) -> Any:
    """Runs an audited RPC's method with its entry current (storage's write transaction appends the record);
    when it succeeds having written nothing, the record is appended alone."""
    token = audit.current.set(entry)
    try:
        answer = await call
    finally:
        audit.current.reset(token)
    if not entry.written:
        await servicer.authority.record_audit_alone(entry)
    return answer


class Refusal(Exception):
    """A call refused before its method runs: unauthenticated, a role or the scope missing, or (looking up a
    platform credential) the database down."""

    def __init__(self, status: grpc.Status):
        super().__init__(status.details)
        self.status = status


def refusal(code: grpc.StatusCode, message: str) -> Refusal:
    return Refusal(_rich_status(code, message))


async def credential_caller(servicer: Servicer, metadata: dict[str, str]) -> Caller | None:
    """A platform credential's caller, looked up after the static tokens; fails closed when the database is down."""
    try:
        return await servicer.auth.authenticate_platform(metadata.get("authorization"))
    except LookupsExhausted:
        metrics.PLATFORM_LOOKUPS_REFUSED.inc()
        raise refusal(grpc.StatusCode.UNAVAILABLE, "too many unknown platform credentials presented; retry") from None
    except DATABASE_DOWN as error:
        log.warning("database unavailable looking up a platform credential: %s", type(error).__name__)
        raise refusal(grpc.StatusCode.UNAVAILABLE, "credit database unavailable; retry") from None


def admit(caller: Caller | None, request: Any, name: str, roles: tuple[Role, ...], scope: ScopeOf | None) -> Caller:
    """The caller, if it may make this call; else Refusal."""
    if caller is None:
        raise refusal(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
    if not caller.roles.intersection(roles):
        needed = " or ".join(r.value for r in roles)
        raise Refusal(status_for(PermissionDenied(f"{name} requires the {needed} role", ROLE_REQUIRED,
                                                  {"rpc": name, "roles": needed})))
    refused = out_of_scope(caller, request, name, scope)
    if refused is not None:
        raise Refusal(status_for(refused))
    return caller


def rpc(*roles: Role, scope: ScopeOf | None = None, audited: Audited | None = None) -> Callable:
    """Authenticates the caller, checks one of `roles` (and, for a platform credential, that the RPC is open
    to it and the request in its scope: `scope` names the request's funding, IN_METHOD leaves it to the
    method, None refuses platform credentials), maps errors to statuses, and records the call (metrics; a
    JSON access-log line with the request id). Every CreditAdmin RPC says whether it changes something
    (`audited`, else NOT_A_CHANGE): a call that does and succeeds appends exactly one audit record, in the
    change's own transaction (storage's `writing`), or alone when the method wrote nothing (a replay)."""

    def decorate(method: Callable[..., Awaitable[Any]]) -> Callable:
        name = method.__name__

        @functools.wraps(method)
        async def handler(self: Servicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            metadata = dict(context.invocation_metadata() or ())
            logs.request_id.set(metadata.get("x-request-id"))
            code = grpc.StatusCode.OK
            try:
                try:
                    # Static tokens first, without an await: the hot path's cost is unchanged for them.
                    caller = self.auth.authenticate(metadata.get("authorization"))
                    if caller is None and self.auth.platforms is not None:
                        caller = await credential_caller(self, metadata)
                    caller = admit(caller, request, name, roles, scope)
                except Refusal as refused:
                    code = refused.status.code
                    await context.abort(code, refused.status.details, refused.status.trailing_metadata)
                try:
                    if audited is None or not audited.kind or caller is None:
                        return await method(self, request, caller)
                    entry = audit_entry(audited, name, caller, request, metadata, context)
                    return await run_audited(self, method(self, request, caller), entry)
                except CreditError as error:
                    status = status_for(error)
                except DATABASE_DOWN as error:
                    log.warning("database unavailable in %s: %s", name, type(error).__name__)
                    status = _rich_status(grpc.StatusCode.UNAVAILABLE, "credit database unavailable; retry")
                except asyncpg.PostgresError as error:
                    log.exception("database error in %s", name)
                    status = _rich_status(grpc.StatusCode.INTERNAL, f"database error {error.sqlstate}")
                except Exception:
                    log.exception("unexpected error in %s", name)
                    status = _rich_status(grpc.StatusCode.INTERNAL, "internal error")
                code = status.code
                await context.abort(status.code, status.details, status.trailing_metadata)
            finally:
                elapsed = time.perf_counter() - started
                metrics.RPC_REQUESTS.labels(name, code.name).inc()
                metrics.RPC_LATENCY.labels(name).observe(elapsed)
                if self.access_log:
                    logs.access(msg="rpc", rpc=name, code=code.name, ms=round(elapsed * 1000, 2))

        handler.audited = audited  # type: ignore[attr-defined]
        return handler

    return decorate


class Servicer:
    """What every servicer holds: the domain, the token authenticator, whether to write access logs."""

    def __init__(self, authority: CreditAuthority, auth: TokenAuthenticator, access_log: bool = True):
        self.authority = authority
        self.auth = auth
        self.access_log = access_log


