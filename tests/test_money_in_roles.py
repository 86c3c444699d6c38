"""Credits are created by nobody but a verified payment or an operator holding mint: the REST service's token
(spend+read+admin+payments) is tried on every RPC of both services, enumerated from the descriptors, so a new
RPC is covered (and must be classified) the day it is added."""

from __future__ import annotations

import uuid

import grpc
from conftest import Stub
from google.protobuf import descriptor
from payment_events import Payments, session, sign
from stripe_events import event

from credit.v1 import admin_pb2, admin_pb2_grpc, authority_pb2, authority_pb2_grpc

FD = descriptor.FieldDescriptor
SERVICES = {"CreditAdmin": (admin_pb2, admin_pb2_grpc.CreditAdminStub),
            "CreditAuthority": (authority_pb2, authority_pb2_grpc.CreditAuthorityStub)}
# The RPCs that can create credits, and how the REST service's token is refused on each.
CREATES_CREDITS = {"TopUpPool": grpc.StatusCode.PERMISSION_DENIED,
                   "GrantIndividualCredits": grpc.StatusCode.PERMISSION_DENIED,
                   "ApplyPaymentEvent": grpc.StatusCode.INVALID_ARGUMENT,  # signed with a secret not the authority's
                   "RecordCheckout": grpc.StatusCode.INVALID_ARGUMENT}  # a credits figure of its own
# Every other RPC, known not to create credits (a new RPC fails test_every_rpc_is_classified until listed).
MOVES_NO_CREDITS_IN = {
    "CreateUser", "CreateOrganization", "AddMember", "RemoveMember", "SetAllocation", "GetOrganization",
    "ListMembers", "QueryUsage", "CreateApiKey", "RevokeApiKey", "VerifyApiKey", "ListApiKeys", "SetAlertWebhook",
    "GetAlertWebhook", "CreateAlertThreshold", "DeleteAlertThreshold", "ListAlertThresholds", "ListAlertEvents",
    "ListPurchases", "GetStatement", "GetForecast", "SetRateLimit", "ListRateLimits", "Check", "Reserve", "Commit",
    "Release", "GetBalance", "CreatePlatformCredential", "ListPlatformCredentials", "RotatePlatformCredential",
    "RevokePlatformCredential", "ListAuditRecords"}


def methods() -> list[tuple[str, str, type]]:
    found = []
    for service, (module, _) in SERVICES.items():
        for method in module.DESCRIPTOR.services_by_name[service].methods:
            request_cls = getattr(admin_pb2, method.input_type.name, None) or getattr(authority_pb2,
                                                                                      method.input_type.name)
            found.append((service, method.name, request_cls))
    return found


def attempt(name: str, request_cls, org_id: str, user_id: str):
    """The request that would create credits if the RPC let it, or a generic one aimed at the same org/user."""
    if name == "ApplyPaymentEvent":
        payload = event("checkout.session.completed", session(org_id, 10**9))
        return request_cls(payload=payload, signature=sign(payload, "whsec_the_rest_services_own_guess"))
    if name == "RecordCheckout":
        return request_cls(org_id=org_id, session_id=f"cs_{uuid.uuid4().hex}", amount_minor=100, currency="usd",
                           credits_millicredits=10**15)
    request = request_cls()
    for field in request_cls.DESCRIPTOR.fields:
        if field.name == "org_id":
            setattr(request, field.name, org_id)
        elif field.name in ("user_id", "allocated_by"):
            setattr(request, field.name, user_id)
        elif field.type in (FD.TYPE_INT64, FD.TYPE_INT32) and not field.is_repeated:
            setattr(request, field.name, 10**15 if field.type == FD.TYPE_INT64 else 1_000)
        elif field.type == FD.TYPE_STRING and not field.is_repeated:
            setattr(request, field.name, f"ref-{uuid.uuid4().hex[:8]}")
    return request



def money(payments: Payments) -> tuple[int, int]:
    """Every credit that exists: all pools' totals, all individual balances' limits."""
    [row] = payments.query("SELECT (SELECT coalesce(sum(total_mc), 0) FROM org_pools)::BIGINT,"
                           "       (SELECT coalesce(sum(limit_mc), 0) FROM individual_balances)::BIGINT")
    return tuple(row)


def test_every_rpc_is_classified():
    names = {name for _, name, _ in methods()}
    assert names == set(CREATES_CREDITS) | MOVES_NO_CREDITS_IN, \
        f"classify: {sorted(names ^ (set(CREATES_CREDITS) | MOVES_NO_CREDITS_IN))}"


def test_the_rest_services_token_creates_no_credits_through_any_rpc_and_the_operator_with_mint_can(
        payments, world, tokens):
    org_id = world.org(50_000)
    user_id = world.user(individual_mc=10_000)
    world.member(org_id, user_id, 20_000)
    stubs = {service: Stub(stub_cls(payments.channel), tokens.service) for service, (_, stub_cls) in SERVICES.items()}
    before = money(payments)
    answers = {}
    for service, name, request_cls in methods():
        try:
            getattr(stubs[service], name)(attempt(name, request_cls, org_id, user_id))
            answers[name] = "OK"
        except grpc.RpcError as error:
            answers[name] = error.code()
        assert money(payments) == before, f"{name} by the REST service's token changed the credits in existence"
    assert {name: answers[name] for name in CREATES_CREDITS} == CREATES_CREDITS, answers
    assert payments.pool(org_id).pool_total_millicredits == 50_000
    assert not payments.violations()

    operator = payments.operator  # admin+read+mint
    operator.TopUpPool(admin_pb2.TopUpPoolRequest(org_id=org_id, amount_millicredits=5_000,
                                                  purchase_reference="po-by-hand"))
    operator.GrantIndividualCredits(admin_pb2.GrantIndividualCreditsRequest(
        user_id=user_id, amount_millicredits=1_000, reason="goodwill", reference="ticket-1"))
    assert money(payments) == (before[0] + 5_000, before[1] + 1_000)
    rows = payments.query("SELECT source, created_by FROM pool_top_ups WHERE org_id = $1 AND purchase_reference = $2",
                          org_id, "po-by-hand")
    assert [tuple(r) for r in rows] == [("operator", "ops")]
    assert payments.ledger(org_id)[-1] == ("top_up", 5_000, "operator ops, reference po-by-hand")
    [grant] = payments.query("SELECT created_by FROM individual_grants WHERE user_id = $1 AND reference = $2",
                             user_id, "ticket-1")
    assert grant["created_by"] == "ops"
