"""gRPC transport of the credit authority: servicers, auth per RPC, error
mapping (with google.rpc details), health checking, reflection, the expiry
sweeper and a graceful serve() loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import signal
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import uvloop
from google.protobuf import any_pb2, struct_pb2, timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from credit.v1 import admin_pb2, admin_pb2_grpc, authority_pb2, authority_pb2_grpc, types_pb2

from . import logs, metrics
from .alert_messages import (
    alert_event_message,
    alert_kind_name,
    alert_threshold_message,
    alert_webhook_message,
)
from .alerts import start_alert_worker
from .auth import Caller, Role, TokenAuthenticator
from .authority import CreditAuthority, UsageQuery
from .embedded_db import ensure_database
from .errors import (
    ROLE_REQUIRED,
    AlreadyExists,
    CreditError,
    FailedPrecondition,
    InsufficientCredits,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from .migrate import migrate
from .settings import Settings
from .storage import ApiKeyRow, Balance, MemberRow, OrgSummary, Storage

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
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def _rich_status(code: grpc.StatusCode, message: str, detail: Any | None = None) -> grpc.Status:
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
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
            reason="INSUFFICIENT_CREDITS", domain=ERROR_DOMAIN,
            metadata={"available": str(error.available), "requested": str(error.requested),
                      "funding": error.funding})
    elif error.reason:
        detail = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.details)
    return _rich_status(code, error.message, detail)


def rpc(*roles: Role) -> Callable:
    """Authenticates the caller, checks one of `roles`, maps errors to statuses,
    and records the call (metrics; a JSON access-log line with the request id)."""

    def decorate(method: Callable[..., Awaitable[Any]]) -> Callable:
        name = method.__name__

        @functools.wraps(method)
        async def handler(self: _Servicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            metadata = dict(context.invocation_metadata() or ())
            logs.request_id.set(metadata.get("x-request-id"))
            code = grpc.StatusCode.OK
            try:
                caller = self.auth.authenticate(metadata.get("authorization"))
                if caller is None:
                    code = grpc.StatusCode.UNAUTHENTICATED
                    await context.abort(code, "missing or invalid bearer token")
                assert caller is not None  # abort() raised otherwise
                if not caller.roles.intersection(roles):
                    code = grpc.StatusCode.PERMISSION_DENIED
                    needed = " or ".join(r.value for r in roles)
                    denied = status_for(PermissionDenied(f"{name} requires the {needed} role", ROLE_REQUIRED,
                                                         {"rpc": name, "roles": needed}))
                    await context.abort(denied.code, denied.details, denied.trailing_metadata)
                try:
                    return await method(self, request, caller)
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

        return handler

    return decorate


def _value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise InvalidArgument("metadata", "numbers must be finite (no NaN or Infinity)")
        # Struct numbers are doubles; token counts and the like read better as integers.
        return int(number) if number.is_integer() and abs(number) <= 2**53 else number
    if kind == "struct_value":
        return _struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_value(v) for v in value.list_value.values]
    if kind in ("string_value", "bool_value"):
        return getattr(value, kind)
    return None


def _struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    return {key: _value(item) for key, item in message.fields.items()}


def _dict_to_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def _timestamp(value: Any) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value.astimezone(timezone.utc))
    return ts


def _time_field(message: Any, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    try:
        return getattr(message, field).ToDatetime(timezone.utc)
    except ValueError as error:  # seconds or nanos outside google.protobuf.Timestamp's range
        raise InvalidArgument(field, str(error)) from None


def _funding(kind: str, org_id: str | None) -> types_pb2.Funding:
    if kind == "org":
        return types_pb2.Funding(kind=types_pb2.Funding.ORG, org_id=org_id or "")
    return types_pb2.Funding(kind=types_pb2.Funding.INDIVIDUAL)


class _Servicer:
    def __init__(self, authority: CreditAuthority, auth: TokenAuthenticator, access_log: bool = True):
        self.authority = authority
        self.auth = auth
        self.access_log = access_log


class AuthorityServicer(_Servicer, authority_pb2_grpc.CreditAuthorityServicer):
    """credit.v1.CreditAuthority: the hot path."""

    @rpc(Role.SPEND)
    async def Check(self, request: authority_pb2.CheckRequest, caller: Caller) -> authority_pb2.CheckResponse:
        allowed, balance = await self.authority.check(request.user_id, request.org_id, request.amount_millicredits)
        return authority_pb2.CheckResponse(allowed=allowed, funding=_funding(balance.funding_kind, balance.org_id),
                                           available_millicredits=balance.available_mc)

    @rpc(Role.SPEND)
    async def Reserve(self, request: authority_pb2.ReserveRequest, caller: Caller) -> authority_pb2.ReserveResponse:
        hold = await self.authority.reserve(
            caller=caller.name, request_id=request.request_id, user_id=request.user_id, org_id=request.org_id,
            amount_mc=request.amount_millicredits, ttl_seconds=request.ttl_seconds,
            service_type=request.service_type, service_name=request.service_name,
            metadata=_struct_to_dict(request.metadata))
        if not hold.replayed:
            metrics.RESERVED.inc(hold.reserved_mc)
        return authority_pb2.ReserveResponse(
            reservation_id=str(hold.reservation_id), funding=_funding(hold.funding_kind, hold.org_id),
            reserved_millicredits=hold.reserved_mc, available_millicredits=hold.available_mc,
            expires_at=_timestamp(hold.expires_at), replayed=hold.replayed, status=hold.status)

    @rpc(Role.SPEND)
    async def Commit(self, request: authority_pb2.CommitRequest, caller: Caller) -> authority_pb2.CommitResponse:
        charge = await self.authority.commit(caller=caller.name, reservation_id=request.reservation_id,
                                             amount_mc=request.amount_millicredits,
                                             metadata=_struct_to_dict(request.metadata))
        metrics.COMMITTED.inc(charge.charged_mc)
        return authority_pb2.CommitResponse(
            charged_millicredits=charge.charged_mc, available_millicredits=charge.available_mc,
            overrun=charge.overrun, late=charge.late, funding=_funding(charge.funding_kind, charge.org_id))

    @rpc(Role.SPEND)
    async def Release(self, request: authority_pb2.ReleaseRequest, caller: Caller) -> authority_pb2.ReleaseResponse:
        await self.authority.release(caller=caller.name, reservation_id=request.reservation_id, reason=request.reason)
        metrics.RELEASES.inc()
        return authority_pb2.ReleaseResponse()

    @rpc(Role.SPEND, Role.READ)
    async def GetBalance(self, request: authority_pb2.GetBalanceRequest,
                         caller: Caller) -> authority_pb2.GetBalanceResponse:
        balance = await self.authority.balance(request.user_id, request.org_id)
        return _balance_response(balance)


def _balance_response(balance: Balance) -> authority_pb2.GetBalanceResponse:
    return authority_pb2.GetBalanceResponse(
        funding=_funding(balance.funding_kind, balance.org_id), limit_millicredits=balance.limit_mc,
        used_millicredits=balance.used_mc, held_millicredits=balance.held_mc,
        available_millicredits=balance.available_mc)


_ROLE_NAMES = {admin_pb2.MEMBER_ROLE_OWNER: "owner", admin_pb2.MEMBER_ROLE_ADMIN: "admin",
               admin_pb2.MEMBER_ROLE_MEMBER: "member", admin_pb2.MEMBER_ROLE_UNSPECIFIED: "member"}
_ROLE_ENUMS = {"owner": admin_pb2.MEMBER_ROLE_OWNER, "admin": admin_pb2.MEMBER_ROLE_ADMIN,
               "member": admin_pb2.MEMBER_ROLE_MEMBER}
_KEY_KINDS = {admin_pb2.API_KEY_KIND_UNSPECIFIED: "user", admin_pb2.API_KEY_KIND_USER: "user",
              admin_pb2.API_KEY_KIND_SERVICE: "service"}
_GROUPINGS = {admin_pb2.USAGE_GROUP_BY_UNSPECIFIED: None, admin_pb2.USAGE_GROUP_BY_USER: "user",
              admin_pb2.USAGE_GROUP_BY_MODEL: "model", admin_pb2.USAGE_GROUP_BY_SERVICE_TYPE: "service_type",
              admin_pb2.USAGE_GROUP_BY_DAY: "day"}


def _enum(table: dict, value: int, field: str) -> Any:
    if value not in table:
        raise InvalidArgument(field, f"unknown value {value}")
    return table[value]


def _org_message(org: OrgSummary) -> admin_pb2.Organization:
    return admin_pb2.Organization(
        org_id=org.org_id, name=org.name, pool_total_millicredits=org.pool_total_mc,
        allocated_millicredits=org.allocated_mc, unallocated_millicredits=org.pool_total_mc - org.allocated_mc,
        used_millicredits=org.used_mc, held_millicredits=org.held_mc, created_at=_timestamp(org.created_at))


def _member_message(m: MemberRow) -> admin_pb2.Member:
    return admin_pb2.Member(
        org_id=m.org_id, user_id=m.user_id, role=_ROLE_ENUMS[m.role], is_default=m.is_default,
        allocation_millicredits=m.allocation_mc, used_millicredits=m.used_mc, held_millicredits=m.held_mc,
        available_millicredits=m.allocation_mc - m.used_mc - m.held_mc, joined_at=_timestamp(m.joined_at))


def _key_message(k: ApiKeyRow) -> admin_pb2.ApiKey:
    return admin_pb2.ApiKey(
        key_id=k.key_id, user_id=k.user_id, org_id=k.org_id or "",
        kind=admin_pb2.API_KEY_KIND_SERVICE if k.kind == "service" else admin_pb2.API_KEY_KIND_USER,
        name=k.name, created_at=_timestamp(k.created_at), revoked_at=_timestamp(k.revoked_at))


def _usage_record(row: dict) -> admin_pb2.UsageRecord:
    return admin_pb2.UsageRecord(
        reservation_id=str(row["reservation_id"]), org_id=row["org_id"] or "", user_id=row["user_id"],
        funding_kind=types_pb2.Funding.ORG if row["funding_kind"] == "org" else types_pb2.Funding.INDIVIDUAL,
        service_type=row["service_type"], service_name=row["service_name"],
        credits_used_millicredits=row["credits_used"], request_id=row["request_id"],
        request_metadata=_dict_to_struct(row["request_metadata"]), overrun=row["overrun"], late=row["late"],
        created_at=_timestamp(row["created_at"]))


class AdminServicer(_Servicer, admin_pb2_grpc.CreditAdminServicer):
    """credit.v1.CreditAdmin: everything that is not the hot path."""

    @rpc(Role.ADMIN)
    async def CreateUser(self, request: admin_pb2.CreateUserRequest, caller: Caller) -> admin_pb2.User:
        user = await self.authority.create_user(request.user_id, request.display_name, request.email)
        return admin_pb2.User(user_id=user.user_id, display_name=user.display_name, email=user.email,
                              created_at=_timestamp(user.created_at))

    @rpc(Role.ADMIN)
    async def CreateOrganization(self, request: admin_pb2.CreateOrganizationRequest,
                                 caller: Caller) -> admin_pb2.Organization:
        return _org_message(await self.authority.create_organization(request.org_id, request.name))

    @rpc(Role.ADMIN)
    async def AddMember(self, request: admin_pb2.AddMemberRequest, caller: Caller) -> admin_pb2.Member:
        role = _enum(_ROLE_NAMES, request.role, "role")
        return _member_message(await self.authority.add_member(request.org_id, request.user_id, role,
                                                               request.is_default))

    @rpc(Role.ADMIN)
    async def RemoveMember(self, request: admin_pb2.RemoveMemberRequest,
                           caller: Caller) -> admin_pb2.RemoveMemberResponse:
        returned = await self.authority.remove_member(request.org_id, request.user_id)
        return admin_pb2.RemoveMemberResponse(returned_to_pool_millicredits=returned)

    @rpc(Role.ADMIN)
    async def TopUpPool(self, request: admin_pb2.TopUpPoolRequest, caller: Caller) -> admin_pb2.Organization:
        return _org_message(await self.authority.top_up_pool(
            request.org_id, request.amount_millicredits, request.purchase_reference, request.purchase_amount,
            request.purchase_currency))

    @rpc(Role.ADMIN)
    async def SetAllocation(self, request: admin_pb2.SetAllocationRequest, caller: Caller) -> admin_pb2.Member:
        return _member_message(await self.authority.set_allocation(
            request.org_id, request.user_id, request.allocation_millicredits,
            request.allocated_by or caller.name))

    @rpc(Role.ADMIN)
    async def GrantIndividualCredits(self, request: admin_pb2.GrantIndividualCreditsRequest,
                                     caller: Caller) -> admin_pb2.IndividualBalance:
        balance = await self.authority.grant_individual(request.user_id, request.amount_millicredits,
                                                        request.reason, request.reference)
        return admin_pb2.IndividualBalance(
            user_id=request.user_id, limit_millicredits=balance.limit_mc, used_millicredits=balance.used_mc,
            held_millicredits=balance.held_mc, available_millicredits=balance.available_mc)

    @rpc(Role.ADMIN, Role.READ)
    async def GetOrganization(self, request: admin_pb2.GetOrganizationRequest,
                              caller: Caller) -> admin_pb2.Organization:
        return _org_message(await self.authority.get_organization(request.org_id))

    @rpc(Role.ADMIN, Role.READ)
    async def ListMembers(self, request: admin_pb2.ListMembersRequest,
                          caller: Caller) -> admin_pb2.ListMembersResponse:
        members = await self.authority.list_members(request.org_id)
        return admin_pb2.ListMembersResponse(members=[_member_message(m) for m in members])

    @rpc(Role.ADMIN, Role.READ)
    async def QueryUsage(self, request: admin_pb2.QueryUsageRequest,
                         caller: Caller) -> admin_pb2.QueryUsageResponse:
        query = UsageQuery(
            org_id=request.org_id, user_id=request.user_id, service_type=request.service_type,
            model=request.model,
            start=_time_field(request, "start_time"), end=_time_field(request, "end_time"),
            group_by=_enum(_GROUPINGS, request.group_by, "group_by"), limit=request.limit)
        records, groups, total_mc, total_requests = await self.authority.query_usage(query)
        return admin_pb2.QueryUsageResponse(
            records=[_usage_record(r) for r in records],
            groups=[admin_pb2.UsageGroup(key=g["key"], requests=g["requests"], credits_used_millicredits=g["mc"])
                    for g in groups],
            total_millicredits=total_mc, total_requests=total_requests)

    @rpc(Role.ADMIN)
    async def CreateApiKey(self, request: admin_pb2.CreateApiKeyRequest,
                           caller: Caller) -> admin_pb2.CreateApiKeyResponse:
        kind = _enum(_KEY_KINDS, request.kind, "kind")
        key, secret = await self.authority.create_api_key(request.user_id, request.org_id, kind, request.name)
        return admin_pb2.CreateApiKeyResponse(key=_key_message(key), secret=secret)

    @rpc(Role.ADMIN)
    async def RevokeApiKey(self, request: admin_pb2.RevokeApiKeyRequest, caller: Caller) -> admin_pb2.ApiKey:
        return _key_message(await self.authority.revoke_api_key(request.key_id))

    @rpc(Role.ADMIN, Role.SPEND)
    async def VerifyApiKey(self, request: admin_pb2.VerifyApiKeyRequest,
                           caller: Caller) -> admin_pb2.VerifyApiKeyResponse:
        key = await self.authority.verify_api_key(request.secret)
        if key is None:
            return admin_pb2.VerifyApiKeyResponse(valid=False)
        return admin_pb2.VerifyApiKeyResponse(valid=True, key=_key_message(key))

    @rpc(Role.ADMIN, Role.READ)
    async def ListApiKeys(self, request: admin_pb2.ListApiKeysRequest,
                          caller: Caller) -> admin_pb2.ListApiKeysResponse:
        keys = await self.authority.list_api_keys(request.user_id, request.org_id)
        return admin_pb2.ListApiKeysResponse(keys=[_key_message(k) for k in keys])

    # ---- low-balance alerts (issue 7; delivery: credit_service/alerts.py) ----

    @rpc(Role.ADMIN)
    async def SetAlertWebhook(self, request: admin_pb2.SetAlertWebhookRequest,
                              caller: Caller) -> admin_pb2.SetAlertWebhookResponse:
        row = await self.authority.set_alert_webhook(request.org_id, request.url, request.secret)
        return admin_pb2.SetAlertWebhookResponse(webhook=alert_webhook_message(request.org_id, row))

    @rpc(Role.ADMIN, Role.READ)
    async def GetAlertWebhook(self, request: admin_pb2.GetAlertWebhookRequest,
                              caller: Caller) -> admin_pb2.GetAlertWebhookResponse:
        row = await self.authority.get_alert_webhook(request.org_id)
        return admin_pb2.GetAlertWebhookResponse(webhook=alert_webhook_message(request.org_id, row))

    @rpc(Role.ADMIN)
    async def CreateAlertThreshold(self, request: admin_pb2.CreateAlertThresholdRequest,
                                   caller: Caller) -> admin_pb2.CreateAlertThresholdResponse:
        row = await self.authority.create_alert_threshold(
            request.org_id, request.user_id, alert_kind_name(request.kind), request.value)
        return admin_pb2.CreateAlertThresholdResponse(threshold=alert_threshold_message(row))

    @rpc(Role.ADMIN)
    async def DeleteAlertThreshold(self, request: admin_pb2.DeleteAlertThresholdRequest,
                                   caller: Caller) -> admin_pb2.DeleteAlertThresholdResponse:
        await self.authority.delete_alert_threshold(request.org_id, request.threshold_id)
        return admin_pb2.DeleteAlertThresholdResponse()

    @rpc(Role.ADMIN, Role.READ)
    async def ListAlertThresholds(self, request: admin_pb2.ListAlertThresholdsRequest,
                                  caller: Caller) -> admin_pb2.ListAlertThresholdsResponse:
        rows = await self.authority.list_alert_thresholds(request.org_id, request.user_id)
        return admin_pb2.ListAlertThresholdsResponse(thresholds=[alert_threshold_message(r) for r in rows])

    @rpc(Role.ADMIN, Role.READ)
    async def ListAlertEvents(self, request: admin_pb2.ListAlertEventsRequest,
                              caller: Caller) -> admin_pb2.ListAlertEventsResponse:
        rows = await self.authority.list_alert_events(request.org_id, request.user_id, request.limit)
        return admin_pb2.ListAlertEventsResponse(events=[alert_event_message(r) for r in rows])


class Sweeper:
    """Releases expired holds every interval; reports database health."""

    def __init__(self, authority: CreditAuthority, storage: Storage, health_servicer: health.aio.HealthServicer,
                 interval: float, batch: int):
        self._authority = authority
        self._storage = storage
        self._health = health_servicer
        self._interval = interval
        self._batch = batch
        self.expired_total = 0

    async def run(self) -> None:
        while True:
            try:
                while (count := await self._authority.expire_holds(self._batch)) > 0:
                    self.expired_total += count
                    metrics.EXPIRED.inc(count)
                    log.info("sweeper released %d expired holds", count)
                    if count < self._batch:
                        break
                metrics.SWEEPS.inc()
                holds, held = await self._storage.outstanding_holds()
                metrics.HOLDS_OUTSTANDING.set(holds)
                metrics.HELD_OUTSTANDING.set(held)
                size, idle = self._storage.pool_stats()
                metrics.DB_POOL_SIZE.set(size)
                metrics.DB_POOL_IDLE.set(idle)
                await self._set_health(health_pb2.HealthCheckResponse.SERVING)
            except DATABASE_DOWN:
                await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
            except Exception:  # keep sweeping whatever one pass hit
                log.exception("sweeper pass failed")
            await asyncio.sleep(self._interval)

    async def _set_health(self, status: int) -> None:
        for service in ("", "credit.v1.CreditAuthority", "credit.v1.CreditAdmin"):
            await self._health.set(service, status)


def _bind(server: grpc.aio.Server, settings: Settings) -> int:
    """Plaintext, TLS (certificate and key set) or mutual TLS (client CA set too)."""
    if not settings.tls_cert_file:
        if settings.tls_client_ca_file:
            raise ValueError("CREDIT_TLS_CLIENT_CA_FILE needs CREDIT_TLS_CERT_FILE and CREDIT_TLS_KEY_FILE")
        return server.add_insecure_port(settings.listen_addr)
    key = Path(settings.tls_key_file).read_bytes()
    cert = Path(settings.tls_cert_file).read_bytes()
    client_ca = Path(settings.tls_client_ca_file).read_bytes() if settings.tls_client_ca_file else None
    credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                              require_client_auth=client_ca is not None)
    return server.add_secure_port(settings.listen_addr, credentials)


async def start_server(settings: Settings, storage: Storage,
                       auth: TokenAuthenticator) -> tuple[grpc.aio.Server, int, Sweeper]:
    authority = CreditAuthority(storage, default_ttl_seconds=settings.default_ttl_seconds,
                                max_ttl_seconds=settings.max_ttl_seconds)
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                      ("grpc.so_reuseport", 1 if settings.reuse_port else 0)])
    authority_pb2_grpc.add_CreditAuthorityServicer_to_server(AuthorityServicer(authority, auth, settings.access_log),
                                                             server)
    admin_pb2_grpc.add_CreditAdminServicer_to_server(AdminServicer(authority, auth, settings.access_log), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (authority_pb2.DESCRIPTOR.services_by_name["CreditAuthority"].full_name,
             admin_pb2.DESCRIPTOR.services_by_name["CreditAdmin"].full_name,
             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    port = _bind(server, settings)
    if port == 0:
        raise RuntimeError(f"could not bind {settings.listen_addr}")
    await server.start()
    sweeper = Sweeper(authority, storage, health_servicer, settings.sweep_interval_seconds, settings.sweep_batch)
    return server, port, sweeper


async def serve(settings: Settings) -> None:
    """Runs one authority process until SIGTERM/SIGINT."""
    auth = TokenAuthenticator.from_settings(settings.auth_tokens, settings.auth_tokens_file)
    database_url = ensure_database(settings.database_url, settings.data_dir, settings.embedded_pg_port)
    if settings.migrate_on_start:
        applied = await migrate(database_url)
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
    storage = await Storage.connect(database_url, settings.db_pool_min, settings.db_pool_max,
                                    batch_max=settings.batch_max, batch_in_flight=settings.batch_in_flight)
    server, port, sweeper = await start_server(settings, storage, auth)
    sweep_task = asyncio.create_task(sweeper.run())
    start_alert_worker(database_url, storage, settings.alerts)  # low-balance webhooks (credit_service/alerts.py)
    metrics.serve(settings.metrics_port)
    host = settings.listen_addr.rsplit(":", 1)[0]
    transport = "mTLS" if settings.tls_client_ca_file else "TLS" if settings.tls_cert_file else "plaintext"
    print(f"credit authority listening on {host}:{port} ({transport})", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: draining in-flight calls")
    await server.stop(grace=5)
    sweep_task.cancel()
    await storage.close()
    logs.flush_access()


def main() -> None:
    logs.configure()
    uvloop.run(serve(Settings.from_env()))
