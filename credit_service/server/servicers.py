"""The two services, credit.v1.CreditAuthority and credit.v1.CreditAdmin, and the conversion of
their messages to and from the domain's values."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from credit.v1 import admin_pb2, admin_pb2_grpc, authority_pb2, authority_pb2_grpc, types_pb2

from .. import metrics
from ..alert_messages import (
    alert_event_message,
    alert_kind_name,
    alert_threshold_message,
    alert_webhook_message,
)
from ..auth import Caller, Role
from ..authority import UsageQuery
from ..errors import (
    InvalidArgument,
)
from ..model import ApiKeyRow, Balance, MemberRow, OrgSummary, UsageRecord
from .rpc import Servicer, rpc


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


class AuthorityServicer(Servicer, authority_pb2_grpc.CreditAuthorityServicer):
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


def _usage_record(record: UsageRecord) -> admin_pb2.UsageRecord:
    return admin_pb2.UsageRecord(
        reservation_id=str(record.reservation_id), org_id=record.org_id or "", user_id=record.user_id,
        funding_kind=types_pb2.Funding.ORG if record.funding_kind == "org" else types_pb2.Funding.INDIVIDUAL,
        service_type=record.service_type, service_name=record.service_name,
        credits_used_millicredits=record.credits_used, request_id=record.request_id,
        request_metadata=_dict_to_struct(record.request_metadata), overrun=record.overrun, late=record.late,
        created_at=_timestamp(record.created_at))


class AdminServicer(Servicer, admin_pb2_grpc.CreditAdminServicer):
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
        page = await self.authority.query_usage(query)
        return admin_pb2.QueryUsageResponse(
            records=[_usage_record(r) for r in page.records],
            groups=[admin_pb2.UsageGroup(key=g.key, requests=g.requests, credits_used_millicredits=g.credits_used)
                    for g in page.groups],
            total_millicredits=page.total_mc, total_requests=page.total_requests)

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


