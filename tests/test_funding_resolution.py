"""Funding resolution exactly as docs/contract.md: explicit org, default org, first org, individual."""

from __future__ import annotations

import grpc
import pytest
from helpers import error_info, reserve_request

from credit.v1 import authority_pb2, types_pb2


def _funding(spend, user_id, org_id=""):
    return spend.Reserve(reserve_request(user_id, 1, org_id)).funding


def test_explicit_org_funds_from_the_members_allocation(world, spend):
    org_a, user = world.funded_member(allocation_mc=5_000)
    org_b = world.org(5_000)
    world.member(org_b, user, 5_000)
    funding = _funding(spend, user, org_b)
    assert (funding.kind, funding.org_id) == (types_pb2.Funding.ORG, org_b)
    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=user, org_id=org_b))
    assert balance.held_millicredits == 1


def test_explicit_org_of_which_the_user_is_not_a_member_is_permission_denied(world, spend, db):
    _, user = world.funded_member(allocation_mc=5_000)
    foreign = world.org(5_000)
    with pytest.raises(grpc.RpcError) as raised:
        spend.Reserve(reserve_request(user, 1, foreign))
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as raised:
        spend.Check(authority_pb2.CheckRequest(user_id=user, org_id=foreign, amount_millicredits=1))
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_no_org_given_uses_the_default_org(world, spend):
    first, user = world.funded_member(allocation_mc=5_000)
    default = world.org(5_000)
    world.member(default, user, 5_000, default=True)
    funding = _funding(spend, user)
    assert (funding.kind, funding.org_id) == (types_pb2.Funding.ORG, default)


def test_no_org_given_and_no_default_uses_the_org_joined_first(world, spend):
    first, user = world.funded_member(allocation_mc=5_000)
    second = world.org(5_000)
    world.member(second, user, 5_000)
    funding = _funding(spend, user)
    assert (funding.kind, funding.org_id) == (types_pb2.Funding.ORG, first)


def test_a_new_default_replaces_the_old_one(world, spend):
    first, user = world.funded_member(allocation_mc=5_000)
    world.admin.AddMember  # noqa: B018 - the fixture's admin stub
    second = world.org(5_000)
    world.member(second, user, 5_000, default=True)
    third = world.org(5_000)
    world.member(third, user, 5_000, default=True)
    assert _funding(spend, user).org_id == third


def test_user_without_orgs_funds_from_individual_balance(world, spend):
    user = world.user(individual_mc=5_000)
    funding = _funding(spend, user)
    assert funding.kind == types_pb2.Funding.INDIVIDUAL and funding.org_id == ""
    check = spend.Check(authority_pb2.CheckRequest(user_id=user, amount_millicredits=4_999))
    assert check.allowed and check.available_millicredits == 4_999


def test_member_without_allocation_has_nothing_available_and_no_fallback(world, spend):
    org_id = world.org(5_000)
    user = world.user(individual_mc=5_000)  # individual credits must not be used
    world.member(org_id, user)
    check = spend.Check(authority_pb2.CheckRequest(user_id=user, amount_millicredits=1))
    assert not check.allowed and check.available_millicredits == 0
    assert check.funding.kind == types_pb2.Funding.ORG
    with pytest.raises(grpc.RpcError) as raised:
        spend.Reserve(reserve_request(user, 1))
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(raised.value)
    assert info.reason == "INSUFFICIENT_CREDITS"
    assert dict(info.metadata) == {"available": "0", "requested": "1", "funding": f"org:{org_id}"}


def test_unknown_user_and_unknown_org_are_not_found(world, spend):
    user = world.user(individual_mc=5_000)
    for request in (reserve_request("no-such-user", 1), reserve_request(user, 1, "no-such-org")):
        with pytest.raises(grpc.RpcError) as raised:
            spend.Reserve(request)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_check_is_read_only(world, spend, db):
    org_id, user = world.funded_member(allocation_mc=5_000)
    for _ in range(3):
        assert spend.Check(authority_pb2.CheckRequest(user_id=user, amount_millicredits=5_000)).allowed
    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=user))
    assert (balance.limit_millicredits, balance.used_millicredits, balance.held_millicredits) == (5_000, 0, 0)
    assert not spend.Check(authority_pb2.CheckRequest(user_id=user, amount_millicredits=5_001)).allowed
