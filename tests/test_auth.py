"""Bearer tokens with roles per RPC; health and reflection stay open."""

from __future__ import annotations

import grpc
import pytest
from conftest import Stub
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from helpers import error_info, reserve_request

from credit.v1 import admin_pb2, admin_pb2_grpc, authority_pb2, authority_pb2_grpc


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value.code()


def test_no_token_is_unauthenticated(channel, world):
    user = world.user(individual_mc=1_000)
    stub = authority_pb2_grpc.CreditAuthorityStub(channel)
    assert _code(lambda: stub.Reserve(reserve_request(user, 1))) == grpc.StatusCode.UNAUTHENTICATED
    assert _code(lambda: stub.Reserve(reserve_request(user, 1), metadata=(("authorization", "Bearer wrong-token"),))) \
        == grpc.StatusCode.UNAUTHENTICATED
    assert _code(lambda: stub.Reserve(reserve_request(user, 1), metadata=(("authorization", "Basic abc"),))) \
        == grpc.StatusCode.UNAUTHENTICATED
    admin = admin_pb2_grpc.CreditAdminStub(channel)
    assert _code(lambda: admin.CreateUser(admin_pb2.CreateUserRequest(user_id="x"))) == grpc.StatusCode.UNAUTHENTICATED


def test_spend_token_calling_credit_admin_is_permission_denied(channel, tokens, db):
    admin = Stub(admin_pb2_grpc.CreditAdminStub(channel), tokens.spend)
    assert _code(lambda: admin.CreateUser(admin_pb2.CreateUserRequest(user_id="sneaky-user"))) \
        == grpc.StatusCode.PERMISSION_DENIED
    assert _code(lambda: admin.TopUpPool(admin_pb2.TopUpPoolRequest(
        org_id="x", amount_millicredits=1, purchase_reference="p"))) == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as raised:
        admin.SetAllocation(admin_pb2.SetAllocationRequest(org_id="x", user_id="y"))
    info = error_info(raised.value)  # told apart from "not a member" without parsing the message
    assert info is not None and info.reason == "ROLE_REQUIRED"
    assert dict(info.metadata) == {"rpc": "SetAllocation", "roles": "admin"}


def test_read_token_cannot_spend_but_can_read(channel, tokens, world):
    org, user = world.funded_member(allocation_mc=1_000)
    reader = Stub(authority_pb2_grpc.CreditAuthorityStub(channel), tokens.read)
    assert _code(lambda: reader.Reserve(reserve_request(user, 1, org))) == grpc.StatusCode.PERMISSION_DENIED
    assert _code(lambda: reader.Check(authority_pb2.CheckRequest(user_id=user, amount_millicredits=1))) \
        == grpc.StatusCode.PERMISSION_DENIED
    assert reader.GetBalance(authority_pb2.GetBalanceRequest(user_id=user)).limit_millicredits == 1_000
    admin_reader = Stub(admin_pb2_grpc.CreditAdminStub(channel), tokens.read)
    assert admin_reader.GetOrganization(admin_pb2.GetOrganizationRequest(org_id=org)).pool_total_millicredits == 1_000
    assert _code(lambda: admin_reader.SetAllocation(admin_pb2.SetAllocationRequest(
        org_id=org, user_id=user, allocation_millicredits=0))) == grpc.StatusCode.PERMISSION_DENIED


def test_only_mint_creates_credits_by_hand_admin_alone_is_refused(channel, tokens, world):
    org, user = world.org(), world.user()
    rest = Stub(admin_pb2_grpc.CreditAdminStub(channel), tokens.service)  # spend+read+admin+payments
    calls = {"TopUpPool": lambda: rest.TopUpPool(admin_pb2.TopUpPoolRequest(
                 org_id=org, amount_millicredits=1_000, purchase_reference="po-1")),
             "GrantIndividualCredits": lambda: rest.GrantIndividualCredits(admin_pb2.GrantIndividualCreditsRequest(
                 user_id=user, amount_millicredits=1_000, reason="x", reference="g-1"))}
    for name, call in calls.items():
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert dict(error_info(raised.value).metadata) == {"rpc": name, "roles": "mint"}
    assert rest.GetOrganization(admin_pb2.GetOrganizationRequest(org_id=org)).pool_total_millicredits == 0
    assert world.top_up(org, 1_000).pool_total_millicredits == 1_000  # the operator's token holds mint


def test_admin_token_cannot_spend(channel, tokens, world):
    user = world.user(individual_mc=1_000)
    stub = Stub(authority_pb2_grpc.CreditAuthorityStub(channel), tokens.admin)
    assert _code(lambda: stub.Reserve(reserve_request(user, 1))) == grpc.StatusCode.PERMISSION_DENIED


def test_health_and_reflection_need_no_token(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "credit.v1.CreditAuthority"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == \
            health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"credit.v1.CreditAuthority", "credit.v1.CreditAdmin", "grpc.health.v1.Health"} <= names
