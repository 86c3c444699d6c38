"""The two services, credit.v1.CreditAuthority and credit.v1.CreditAdmin: each RPC converts its
request (messages.py), asks the authority, and converts the answer back."""

from __future__ import annotations

from typing import Any

from credit.v1 import admin_pb2, admin_pb2_grpc, authority_pb2, authority_pb2_grpc

from .. import metrics
from ..auth import Caller, Role, TokenAuthenticator
from ..authority import AuditQuery, CreditAuthority, UsageQuery
from ..errors import ROLE_REQUIRED, PermissionDenied
from ..payments import Payments
from ..platforms import PlatformCredentials
from ..rate_limits import RateLimits
from ..reports import Reports
from .messages import (
    GROUPINGS,
    KEY_KINDS,
    ROLE_NAMES,
    alert_event_message,
    alert_kind_name,
    alert_threshold_message,
    alert_webhook_message,
    audit_record_message,
    balance_response,
    enum_value,
    forecast_message,
    funding_message,
    key_message,
    limits_of,
    member_message,
    org_message,
    payment_outcome_message,
    platform_message,
    purchase_message,
    rate_limit_message,
    rate_limit_status,
    statement_message,
    struct_to_dict,
    time_field,
    timestamp,
    usage_group_message,
    usage_record_message,
)
from .rpc import IN_METHOD, NOT_A_CHANGE, Audited, Servicer, account_of, org_of, rpc


def org_of_request(request: Any) -> str:
    return str(request.org_id)


MEMBER = Audited("member", org_of_request, lambda r: r.user_id)
POOL = Audited("organization", org_of_request, lambda r: r.org_id)
PLATFORM = Audited("platform_credential", target=lambda r: r.name)


class AuthorityServicer(Servicer, authority_pb2_grpc.CreditAuthorityServicer):
    """credit.v1.CreditAuthority: the hot path."""

    @rpc(Role.SPEND, scope=IN_METHOD)
    async def Check(self, request: authority_pb2.CheckRequest, caller: Caller) -> authority_pb2.CheckResponse:
        allowed, balance = await self.authority.check(request.user_id, request.org_id, request.amount_millicredits,
                                                      caller.scope)
        return authority_pb2.CheckResponse(
            allowed=allowed, funding=funding_message(balance.funding_kind, balance.org_id),
            available_millicredits=balance.available_mc)

    @rpc(Role.SPEND, scope=IN_METHOD)
    async def Reserve(self, request: authority_pb2.ReserveRequest, caller: Caller) -> authority_pb2.ReserveResponse:
        hold = await self.authority.reserve(
            caller=caller.name, request_id=request.request_id, user_id=request.user_id, org_id=request.org_id,
            amount_mc=request.amount_millicredits, ttl_seconds=request.ttl_seconds,
            service_type=request.service_type, service_name=request.service_name,
            metadata=struct_to_dict(request.metadata), api_key_id=request.api_key_id,
            estimated_tokens=request.estimated_tokens, scope=caller.scope)
        if not hold.replayed:
            metrics.RESERVED.inc(hold.reserved_mc)
        return authority_pb2.ReserveResponse(
            reservation_id=str(hold.reservation_id), funding=funding_message(hold.funding_kind, hold.org_id),
            reserved_millicredits=hold.reserved_mc, available_millicredits=hold.available_mc,
            expires_at=timestamp(hold.expires_at), replayed=hold.replayed, status=hold.status,
            rate_limits=rate_limit_status(hold.limits))

    # A platform credential commits and releases only reservations it made (scoped to its caller name),
    # which were in its scope when made: its scope never changes.
    @rpc(Role.SPEND, scope=IN_METHOD)
    async def Commit(self, request: authority_pb2.CommitRequest, caller: Caller) -> authority_pb2.CommitResponse:
        charge = await self.authority.commit(caller=caller.name, reservation_id=request.reservation_id,
                                             amount_mc=request.amount_millicredits,
                                             metadata=struct_to_dict(request.metadata),
                                             tokens=request.tokens if request.HasField("tokens") else None)
        metrics.COMMITTED.inc(charge.charged_mc)
        return authority_pb2.CommitResponse(
            charged_millicredits=charge.charged_mc, available_millicredits=charge.available_mc,
            overrun=charge.overrun, late=charge.late, funding=funding_message(charge.funding_kind, charge.org_id))

    @rpc(Role.SPEND, scope=IN_METHOD)
    async def Release(self, request: authority_pb2.ReleaseRequest, caller: Caller) -> authority_pb2.ReleaseResponse:
        await self.authority.release(caller=caller.name, reservation_id=request.reservation_id, reason=request.reason)
        metrics.RELEASES.inc()
        return authority_pb2.ReleaseResponse()

    @rpc(Role.SPEND, Role.READ, scope=IN_METHOD)
    async def GetBalance(self, request: authority_pb2.GetBalanceRequest,
                         caller: Caller) -> authority_pb2.GetBalanceResponse:
        balance = await self.authority.balance(request.user_id, request.org_id, caller.scope)
        return balance_response(balance)


class AdminServicer(Servicer, admin_pb2_grpc.CreditAdminServicer):
    """credit.v1.CreditAdmin: everything that is not the hot path."""

    def __init__(self, authority: CreditAuthority, auth: TokenAuthenticator, access_log: bool, payments: Payments,
                 reports: Reports, rate_limits: RateLimits, platforms: PlatformCredentials):
        super().__init__(authority, auth, access_log)
        self.payments = payments
        self.reports = reports
        self.rate_limits = rate_limits
        self.platforms = platforms

    @rpc(Role.ADMIN, audited=Audited("user", target=lambda r: r.user_id))
    async def CreateUser(self, request: admin_pb2.CreateUserRequest, caller: Caller) -> admin_pb2.User:
        user = await self.authority.create_user(request.user_id, request.display_name, request.email)
        return admin_pb2.User(user_id=user.user_id, display_name=user.display_name, email=user.email,
                              created_at=timestamp(user.created_at))

    @rpc(Role.ADMIN, audited=Audited("organization", target=lambda r: r.org_id))
    async def CreateOrganization(self, request: admin_pb2.CreateOrganizationRequest,
                                 caller: Caller) -> admin_pb2.Organization:
        return org_message(await self.authority.create_organization(request.org_id, request.name))

    @rpc(Role.ADMIN, audited=MEMBER)
    async def AddMember(self, request: admin_pb2.AddMemberRequest, caller: Caller) -> admin_pb2.Member:
        role = enum_value(ROLE_NAMES, request.role, "role")
        return member_message(await self.authority.add_member(request.org_id, request.user_id, role,
                                                               request.is_default))

    @rpc(Role.ADMIN, audited=MEMBER)
    async def RemoveMember(self, request: admin_pb2.RemoveMemberRequest,
                           caller: Caller) -> admin_pb2.RemoveMemberResponse:
        returned = await self.authority.remove_member(request.org_id, request.user_id)
        return admin_pb2.RemoveMemberResponse(returned_to_pool_millicredits=returned)

    @rpc(Role.MINT, audited=POOL)
    async def TopUpPool(self, request: admin_pb2.TopUpPoolRequest, caller: Caller) -> admin_pb2.Organization:
        return org_message(await self.authority.top_up_pool(
            request.org_id, request.amount_millicredits, request.purchase_reference, request.purchase_amount,
            request.purchase_currency, caller.name))

    @rpc(Role.ADMIN, audited=MEMBER)
    async def SetAllocation(self, request: admin_pb2.SetAllocationRequest, caller: Caller) -> admin_pb2.Member:
        return member_message(await self.authority.set_allocation(
            request.org_id, request.user_id, request.allocation_millicredits,
            request.allocated_by or caller.name))

    @rpc(Role.MINT, audited=Audited("user", target=lambda r: r.user_id))
    async def GrantIndividualCredits(self, request: admin_pb2.GrantIndividualCreditsRequest,
                                     caller: Caller) -> admin_pb2.IndividualBalance:
        balance = await self.authority.grant_individual(request.user_id, request.amount_millicredits,
                                                        request.reason, request.reference, caller.name)
        return admin_pb2.IndividualBalance(
            user_id=request.user_id, limit_millicredits=balance.limit_mc, used_millicredits=balance.used_mc,
            held_millicredits=balance.held_mc, available_millicredits=balance.available_mc)

    @rpc(Role.ADMIN, Role.READ, scope=org_of, audited=NOT_A_CHANGE)
    async def GetOrganization(self, request: admin_pb2.GetOrganizationRequest,
                              caller: Caller) -> admin_pb2.Organization:
        return org_message(await self.authority.get_organization(request.org_id))

    @rpc(Role.ADMIN, Role.READ, scope=org_of, audited=NOT_A_CHANGE)
    async def ListMembers(self, request: admin_pb2.ListMembersRequest,
                          caller: Caller) -> admin_pb2.ListMembersResponse:
        members = await self.authority.list_members(request.org_id)
        return admin_pb2.ListMembersResponse(members=[member_message(m) for m in members])

    @rpc(Role.ADMIN, Role.READ, scope=IN_METHOD, audited=NOT_A_CHANGE)
    async def QueryUsage(self, request: admin_pb2.QueryUsageRequest,
                         caller: Caller) -> admin_pb2.QueryUsageResponse:
        query = UsageQuery(
            org_id=request.org_id, user_id=request.user_id, service_type=request.service_type,
            model=request.model,
            start=time_field(request, "start_time"), end=time_field(request, "end_time"),
            group_by=enum_value(GROUPINGS, request.group_by, "group_by"), limit=request.limit)
        page = await self.authority.query_usage(query, caller.scope)
        return admin_pb2.QueryUsageResponse(
            records=[usage_record_message(r) for r in page.records],
            groups=[usage_group_message(g) for g in page.groups],
            total_millicredits=page.total_mc, total_requests=page.total_requests)

    @rpc(Role.ADMIN, audited=Audited("api_key", org_of_request))
    async def CreateApiKey(self, request: admin_pb2.CreateApiKeyRequest,
                           caller: Caller) -> admin_pb2.CreateApiKeyResponse:
        kind = enum_value(KEY_KINDS, request.kind, "kind")
        key, secret = await self.authority.create_api_key(request.user_id, request.org_id, kind, request.name,
                                                          request.ttl_seconds, time_field(request, "expires_at"))
        return admin_pb2.CreateApiKeyResponse(key=key_message(key), secret=secret)

    @rpc(Role.ADMIN, audited=Audited("api_key", target=lambda r: r.key_id))
    async def RevokeApiKey(self, request: admin_pb2.RevokeApiKeyRequest, caller: Caller) -> admin_pb2.ApiKey:
        return key_message(await self.authority.revoke_api_key(request.key_id))

    @rpc(Role.ADMIN, Role.SPEND, audited=NOT_A_CHANGE)
    async def VerifyApiKey(self, request: admin_pb2.VerifyApiKeyRequest,
                           caller: Caller) -> admin_pb2.VerifyApiKeyResponse:
        key = await self.authority.verify_api_key(request.secret)
        if key is None:
            return admin_pb2.VerifyApiKeyResponse(valid=False)
        return admin_pb2.VerifyApiKeyResponse(valid=True, key=key_message(key))

    @rpc(Role.ADMIN, Role.READ, audited=NOT_A_CHANGE)
    async def ListApiKeys(self, request: admin_pb2.ListApiKeysRequest,
                          caller: Caller) -> admin_pb2.ListApiKeysResponse:
        keys = await self.authority.list_api_keys(request.user_id, request.org_id)
        return admin_pb2.ListApiKeysResponse(keys=[key_message(k) for k in keys])

    # ---- low-balance alerts (delivery: credit_service/jobs/alert_delivery.py) ----

    @rpc(Role.ADMIN, audited=Audited("alert_webhook", org_of_request, lambda r: r.org_id))
    async def SetAlertWebhook(self, request: admin_pb2.SetAlertWebhookRequest,
                              caller: Caller) -> admin_pb2.SetAlertWebhookResponse:
        row = await self.authority.set_alert_webhook(request.org_id, request.url, request.secret)
        return admin_pb2.SetAlertWebhookResponse(webhook=alert_webhook_message(request.org_id, row))

    @rpc(Role.ADMIN, Role.READ, audited=NOT_A_CHANGE)
    async def GetAlertWebhook(self, request: admin_pb2.GetAlertWebhookRequest,
                              caller: Caller) -> admin_pb2.GetAlertWebhookResponse:
        row = await self.authority.get_alert_webhook(request.org_id)
        return admin_pb2.GetAlertWebhookResponse(webhook=alert_webhook_message(request.org_id, row))

    @rpc(Role.ADMIN, audited=Audited("alert_threshold", org_of_request))
    async def CreateAlertThreshold(self, request: admin_pb2.CreateAlertThresholdRequest,
                                   caller: Caller) -> admin_pb2.CreateAlertThresholdResponse:
        row = await self.authority.create_alert_threshold(
            request.org_id, request.user_id, alert_kind_name(request.kind), request.value)
        return admin_pb2.CreateAlertThresholdResponse(threshold=alert_threshold_message(row))

    @rpc(Role.ADMIN, audited=Audited("alert_threshold", org_of_request, lambda r: str(r.threshold_id)))
    async def DeleteAlertThreshold(self, request: admin_pb2.DeleteAlertThresholdRequest,
                                   caller: Caller) -> admin_pb2.DeleteAlertThresholdResponse:
        await self.authority.delete_alert_threshold(request.org_id, request.threshold_id)
        return admin_pb2.DeleteAlertThresholdResponse()

    @rpc(Role.ADMIN, Role.READ, audited=NOT_A_CHANGE)
    async def ListAlertThresholds(self, request: admin_pb2.ListAlertThresholdsRequest,
                                  caller: Caller) -> admin_pb2.ListAlertThresholdsResponse:
        rows = await self.authority.list_alert_thresholds(request.org_id, request.user_id)
        return admin_pb2.ListAlertThresholdsResponse(thresholds=[alert_threshold_message(r) for r in rows])

    @rpc(Role.ADMIN, Role.READ, audited=NOT_A_CHANGE)
    async def ListAlertEvents(self, request: admin_pb2.ListAlertEventsRequest,
                              caller: Caller) -> admin_pb2.ListAlertEventsResponse:
        rows = await self.authority.list_alert_events(request.org_id, request.user_id, request.limit)
        return admin_pb2.ListAlertEventsResponse(events=[alert_event_message(r) for r in rows])

    # ---- purchases (credit_service/payments.py) ----

    @rpc(Role.PAYMENTS, audited=Audited("purchase", org_of_request, lambda r: r.session_id))
    async def RecordCheckout(self, request: admin_pb2.RecordCheckoutRequest, caller: Caller) -> admin_pb2.Purchase:
        return purchase_message(await self.payments.record_checkout(
            request.org_id, request.session_id, request.credits_millicredits, request.amount_minor,
            request.currency, request.created_by))

    @rpc(Role.PAYMENTS, audited=Audited("purchase"))
    async def ApplyPaymentEvent(self, request: admin_pb2.ApplyPaymentEventRequest,
                                caller: Caller) -> admin_pb2.ApplyPaymentEventResponse:
        return payment_outcome_message(await self.payments.apply_event(request.payload, request.signature))

    @rpc(Role.ADMIN, Role.READ, audited=NOT_A_CHANGE)
    async def ListPurchases(self, request: admin_pb2.ListPurchasesRequest,
                            caller: Caller) -> admin_pb2.ListPurchasesResponse:
        purchases = await self.payments.list_purchases(request.org_id, request.limit)
        return admin_pb2.ListPurchasesResponse(purchases=[purchase_message(p) for p in purchases])

    # ---- statements and forecasts (credit_service/reports.py) ----

    @rpc(Role.ADMIN, Role.READ, scope=account_of, audited=NOT_A_CHANGE)
    async def GetStatement(self, request: admin_pb2.GetStatementRequest, caller: Caller) -> admin_pb2.Statement:
        return statement_message(await self.reports.statement(
            request.account.org_id, request.account.user_id, time_field(request, "start_time"),
            time_field(request, "end_time")))

    @rpc(Role.ADMIN, Role.READ, scope=account_of, audited=NOT_A_CHANGE)
    async def GetForecast(self, request: admin_pb2.GetForecastRequest, caller: Caller) -> admin_pb2.Forecast:
        return forecast_message(await self.reports.forecast(request.account.org_id, request.account.user_id,
                                                            request.window_days))

    # ---- rate limits (credit_service/rate_limits.py) ----

    @rpc(Role.ADMIN, audited=Audited("rate_limit", org_of_request))
    async def SetRateLimit(self, request: admin_pb2.SetRateLimitRequest, caller: Caller) -> admin_pb2.RateLimit:
        return rate_limit_message(await self.rate_limits.set(request.org_id, request.user_id, request.key_id,
                                                             limits_of(request), request.clear, caller.name))

    @rpc(Role.ADMIN, Role.READ, audited=NOT_A_CHANGE)
    async def ListRateLimits(self, request: admin_pb2.ListRateLimitsRequest,
                             caller: Caller) -> admin_pb2.ListRateLimitsResponse:
        rows = await self.rate_limits.list(request.org_id, request.user_id)
        return admin_pb2.ListRateLimitsResponse(limits=[rate_limit_message(r) for r in rows])

    # ---- platform credentials (credit_service/platforms.py): the operator's role ----

    @rpc(Role.MINT, audited=PLATFORM)
    async def CreatePlatformCredential(self, request: admin_pb2.CreatePlatformCredentialRequest,
                                       caller: Caller) -> admin_pb2.CreatePlatformCredentialResponse:
        row, secret = await self.platforms.create(request.name, list(request.org_ids), request.individuals,
                                                  list(request.roles), caller.name)
        return admin_pb2.CreatePlatformCredentialResponse(credential=platform_message(row), secret=secret)

    @rpc(Role.MINT, audited=NOT_A_CHANGE)
    async def ListPlatformCredentials(self, request: admin_pb2.ListPlatformCredentialsRequest,
                                      caller: Caller) -> admin_pb2.ListPlatformCredentialsResponse:
        return admin_pb2.ListPlatformCredentialsResponse(
            credentials=[platform_message(r) for r in await self.platforms.list()])

    @rpc(Role.MINT, audited=PLATFORM)
    async def RotatePlatformCredential(self, request: admin_pb2.RotatePlatformCredentialRequest,
                                       caller: Caller) -> admin_pb2.RotatePlatformCredentialResponse:
        row, secret = await self.platforms.rotate(request.name, request.grace_seconds)
        return admin_pb2.RotatePlatformCredentialResponse(credential=platform_message(row), secret=secret)

    @rpc(Role.MINT, audited=PLATFORM)
    async def RevokePlatformCredential(self, request: admin_pb2.RevokePlatformCredentialRequest,
                                       caller: Caller) -> admin_pb2.RevokePlatformCredentialResponse:
        return admin_pb2.RevokePlatformCredentialResponse(
            credential=platform_message(await self.platforms.revoke(request.name)))

    # ---- the audit log (credit_service/audit.py) ----

    @rpc(Role.ADMIN, Role.READ, Role.MINT, audited=NOT_A_CHANGE)
    async def ListAuditRecords(self, request: admin_pb2.ListAuditRecordsRequest,
                               caller: Caller) -> admin_pb2.ListAuditRecordsResponse:
        if not request.org_id and not caller.roles & {Role.ADMIN, Role.MINT}:
            raise PermissionDenied("ListAuditRecords without org_id (every record) requires the admin or mint role",
                                   ROLE_REQUIRED, {"rpc": "ListAuditRecords", "roles": "admin or mint"})
        records = await self.authority.list_audit(AuditQuery(
            org_id=request.org_id, actor=request.actor, action=request.action,
            start=time_field(request, "start_time"), end=time_field(request, "end_time"),
            before_id=request.before_id, limit=request.limit))
        return admin_pb2.ListAuditRecordsResponse(records=[audit_record_message(r) for r in records])
