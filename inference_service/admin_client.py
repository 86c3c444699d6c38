"""credit.v1.CreditAdmin as the REST service uses it: one typed method per RPC it calls.

Calls that are safe to repeat (reads, and writes that set a value or carry their own idempotency
key) are retried on UNAVAILABLE / DEADLINE_EXCEEDED with the hot path's policy (RETRY). The two
that create something new each time they run, CreateApiKey and CreateAlertThreshold, are sent
once: a retry after a lost answer could create a second key or threshold. DeleteAlertThreshold is
sent once too: its retry would answer NOT_FOUND for a threshold the first attempt deleted.
RecordCheckout is repeatable (one purchase per Stripe session id), and so is ApplyPaymentEvent
(the authority applies each Stripe event once, however often it is delivered). GetStatement and
GetForecast are reads, and so are ListRateLimits and ListAuditRecords; SetRateLimit sets values (the
same request twice leaves the same limits). CreateUser (a first SSO sign-in) is retried too: a retry whose first attempt
landed answers ALREADY_EXISTS, which the sign-in takes as done.

Errors are the authority's `grpc.aio.AioRpcError`, or whatever `with_errors` maps them to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import grpc

from credit.v1 import admin_pb2, admin_pb2_grpc
from credit_client.retry import RetryPolicy


@dataclass(frozen=True)
class AdminCalls:
    stub: admin_pb2_grpc.CreditAdminStub
    metadata: Callable[[], tuple]  # the bearer token and request id, read at each call
    timeout: float
    retry: RetryPolicy
    map_error: Callable[[grpc.aio.AioRpcError], Exception] | None = None

    def with_errors(self, map_error: Callable[[grpc.aio.AioRpcError], Exception]) -> AdminCalls:
        """The same calls, raising map_error(error) instead of the authority's error."""
        return replace(self, map_error=map_error)

    async def _send(self, method: Any, request: Any, *, repeatable: bool = True) -> Any:
        try:
            if repeatable:
                response, _ = await self.retry.call(method, request, metadata=self.metadata(), timeout=self.timeout)
                return response
            return await method(request, metadata=self.metadata(), timeout=self.timeout)
        except grpc.aio.AioRpcError as error:
            if self.map_error is None:
                raise
            raise self.map_error(error) from None

    # ---- users ----

    async def create_user(self, request: admin_pb2.CreateUserRequest) -> admin_pb2.User:
        """Repeatable: a retry after a lost answer is ALREADY_EXISTS, which the caller takes as done."""
        return await self._send(self.stub.CreateUser, request)

    # ---- keys ----

    async def verify_api_key(self, request: admin_pb2.VerifyApiKeyRequest) -> admin_pb2.VerifyApiKeyResponse:
        return await self._send(self.stub.VerifyApiKey, request)

    async def list_api_keys(self, request: admin_pb2.ListApiKeysRequest) -> admin_pb2.ListApiKeysResponse:
        return await self._send(self.stub.ListApiKeys, request)

    async def create_api_key(self, request: admin_pb2.CreateApiKeyRequest) -> admin_pb2.CreateApiKeyResponse:
        return await self._send(self.stub.CreateApiKey, request, repeatable=False)

    async def revoke_api_key(self, request: admin_pb2.RevokeApiKeyRequest) -> admin_pb2.ApiKey:
        return await self._send(self.stub.RevokeApiKey, request)

    # ---- organizations, members, credits ----

    async def get_organization(self, request: admin_pb2.GetOrganizationRequest) -> admin_pb2.Organization:
        return await self._send(self.stub.GetOrganization, request)

    async def list_members(self, request: admin_pb2.ListMembersRequest) -> admin_pb2.ListMembersResponse:
        return await self._send(self.stub.ListMembers, request)

    async def set_allocation(self, request: admin_pb2.SetAllocationRequest) -> admin_pb2.Member:
        return await self._send(self.stub.SetAllocation, request)

    async def top_up_pool(self, request: admin_pb2.TopUpPoolRequest) -> admin_pb2.Organization:
        return await self._send(self.stub.TopUpPool, request)  # once per purchase_reference

    async def query_usage(self, request: admin_pb2.QueryUsageRequest) -> admin_pb2.QueryUsageResponse:
        return await self._send(self.stub.QueryUsage, request)

    # ---- low-balance alerts ----

    async def get_alert_webhook(self, request: admin_pb2.GetAlertWebhookRequest) -> admin_pb2.GetAlertWebhookResponse:
        return await self._send(self.stub.GetAlertWebhook, request)

    async def set_alert_webhook(self, request: admin_pb2.SetAlertWebhookRequest) -> admin_pb2.SetAlertWebhookResponse:
        return await self._send(self.stub.SetAlertWebhook, request)

    async def list_alert_thresholds(
            self, request: admin_pb2.ListAlertThresholdsRequest) -> admin_pb2.ListAlertThresholdsResponse:
        return await self._send(self.stub.ListAlertThresholds, request)

    async def create_alert_threshold(
            self, request: admin_pb2.CreateAlertThresholdRequest) -> admin_pb2.CreateAlertThresholdResponse:
        return await self._send(self.stub.CreateAlertThreshold, request, repeatable=False)

    async def delete_alert_threshold(
            self, request: admin_pb2.DeleteAlertThresholdRequest) -> admin_pb2.DeleteAlertThresholdResponse:
        return await self._send(self.stub.DeleteAlertThreshold, request, repeatable=False)

    async def list_alert_events(self, request: admin_pb2.ListAlertEventsRequest) -> admin_pb2.ListAlertEventsResponse:
        return await self._send(self.stub.ListAlertEvents, request)

    # ---- payments ----

    async def record_checkout(self, request: admin_pb2.RecordCheckoutRequest) -> admin_pb2.Purchase:
        return await self._send(self.stub.RecordCheckout, request)  # once per session id

    async def apply_payment_event(
            self, request: admin_pb2.ApplyPaymentEventRequest) -> admin_pb2.ApplyPaymentEventResponse:
        return await self._send(self.stub.ApplyPaymentEvent, request)  # the authority applies each event once

    async def list_purchases(self, request: admin_pb2.ListPurchasesRequest) -> admin_pb2.ListPurchasesResponse:
        return await self._send(self.stub.ListPurchases, request)

    # ---- statements and forecasts ----

    async def get_statement(self, request: admin_pb2.GetStatementRequest) -> admin_pb2.Statement:
        return await self._send(self.stub.GetStatement, request)  # a read

    async def get_forecast(self, request: admin_pb2.GetForecastRequest) -> admin_pb2.Forecast:
        return await self._send(self.stub.GetForecast, request)  # a read

    # ---- rate limits ----

    async def set_rate_limit(self, request: admin_pb2.SetRateLimitRequest) -> admin_pb2.RateLimit:
        return await self._send(self.stub.SetRateLimit, request)  # sets values: repeating it changes nothing

    async def list_rate_limits(self, request: admin_pb2.ListRateLimitsRequest) -> admin_pb2.ListRateLimitsResponse:
        return await self._send(self.stub.ListRateLimits, request)  # a read

    # ---- the audit log ----

    async def list_audit_records(
            self, request: admin_pb2.ListAuditRecordsRequest) -> admin_pb2.ListAuditRecordsResponse:
        """A read: one org's records (the console never asks for every org's, which needs the mint role)."""
        return await self._send(self.stub.ListAuditRecords, request)
