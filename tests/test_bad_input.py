"""Bad input gets its documented status, a clear message, and writes nothing."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf import timestamp_pb2
from helpers import bad_request, reserve_request
from invariants import row_counts

from credit.v1 import admin_pb2, authority_pb2

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
INT64_MAX = 2**63 - 1
SQL = "x'; DROP TABLE users; --"


def _reserve(ctx, **overrides):
    fields = dict(request_id=uuid.uuid4().hex, user_id=ctx["user"], org_id=ctx["org"], amount_millicredits=100,
                  service_type="llm_inference", service_name="demo-chat")
    fields.update(overrides)
    return lambda s: s.spend.Reserve(authority_pb2.ReserveRequest(**fields))


def _reserve_with_metadata(ctx, metadata):
    def call(s):
        request = reserve_request(ctx["user"], 100, ctx["org"])
        request.metadata.update(metadata)
        return s.spend.Reserve(request)
    return call


def _commit(reservation_id, amount=10):
    return lambda s: s.spend.Commit(authority_pb2.CommitRequest(reservation_id=reservation_id,
                                                                amount_millicredits=amount))


def _admin(method, request):
    return lambda s: getattr(s.admin, method)(request)


CASES = {
    "reserve zero amount": (lambda c: _reserve(c, amount_millicredits=0), INVALID),
    "reserve negative amount": (lambda c: _reserve(c, amount_millicredits=-1), INVALID),
    "reserve int64 max (2^63-1)": (lambda c: _reserve(c, amount_millicredits=INT64_MAX), INVALID),
    "reserve int64 min": (lambda c: _reserve(c, amount_millicredits=-(2**63)), INVALID),
    "reserve 10^15 + 1": (lambda c: _reserve(c, amount_millicredits=10**15 + 1), INVALID),
    "reserve empty user_id": (lambda c: _reserve(c, user_id=""), INVALID),
    "reserve SQL fragment as user_id": (lambda c: _reserve(c, user_id=SQL), INVALID),
    "reserve SQL fragment as org_id": (lambda c: _reserve(c, org_id=SQL), INVALID),
    "reserve unicode user_id": (lambda c: _reserve(c, user_id="üser-ß"), INVALID),
    "reserve 129-character user_id": (lambda c: _reserve(c, user_id="u" * 129), INVALID),
    "reserve unknown user": (lambda c: _reserve(c, user_id="nobody-" + uuid.uuid4().hex, org_id=""), NOT_FOUND),
    "reserve unknown org": (lambda c: _reserve(c, org_id="no-org-" + uuid.uuid4().hex), NOT_FOUND),
    "reserve empty request_id": (lambda c: _reserve(c, request_id=""), INVALID),
    "reserve 129-character request_id": (lambda c: _reserve(c, request_id="r" * 129), INVALID),
    "reserve request_id with spaces": (lambda c: _reserve(c, request_id="two words"), INVALID),
    "reserve unicode request_id": (lambda c: _reserve(c, request_id="ключ"), INVALID),
    "reserve negative ttl": (lambda c: _reserve(c, ttl_seconds=-5), INVALID),
    "reserve NUL in service_name": (lambda c: _reserve(c, service_name="gpt\x00-4"), INVALID),
    "reserve 200-character service_type": (lambda c: _reserve(c, service_type="t" * 200), INVALID),
    "reserve oversized metadata": (lambda c: _reserve_with_metadata(c, {"blob": "x" * 20_000}), INVALID),
    "reserve NaN in metadata": (lambda c: _reserve_with_metadata(c, {"cost": float("nan")}), INVALID),
    "reserve Infinity in metadata": (lambda c: _reserve_with_metadata(c, {"cost": float("inf")}), INVALID),
    "reserve NUL in metadata": (lambda c: _reserve_with_metadata(c, {"note": "a\x00b"}), INVALID),
    "check zero amount": (lambda c: lambda s: s.spend.Check(authority_pb2.CheckRequest(
        user_id=c["user"], amount_millicredits=0)), INVALID),
    "balance empty user": (lambda c: lambda s: s.spend.GetBalance(authority_pb2.GetBalanceRequest()), INVALID),
    "commit empty reservation_id": (lambda c: _commit(""), INVALID),
    "commit malformed reservation_id": (lambda c: _commit("not-a-uuid"), INVALID),
    "commit SQL fragment as reservation_id": (lambda c: _commit(SQL), INVALID),
    "commit unknown reservation": (lambda c: _commit(str(uuid.uuid4())), NOT_FOUND),
    "commit negative amount": (lambda c: _commit(c["reservation"], -1), INVALID),
    "commit 10^15 + 1": (lambda c: _commit(c["reservation"], 10**15 + 1), INVALID),
    "commit int64 max": (lambda c: _commit(c["reservation"], INT64_MAX), INVALID),
    "release malformed reservation_id": (lambda c: lambda s: s.spend.Release(authority_pb2.ReleaseRequest(
        reservation_id="123")), INVALID),
    "release oversized reason": (lambda c: lambda s: s.spend.Release(authority_pb2.ReleaseRequest(
        reservation_id=c["reservation"], reason="r" * 1_000)), INVALID),
    "top-up zero": (lambda c: _admin("TopUpPool", admin_pb2.TopUpPoolRequest(
        org_id=c["org"], amount_millicredits=0, purchase_reference="p")), INVALID),
    "top-up without purchase reference": (lambda c: _admin("TopUpPool", admin_pb2.TopUpPoolRequest(
        org_id=c["org"], amount_millicredits=5)), INVALID),
    "top-up malformed purchase amount": (lambda c: _admin("TopUpPool", admin_pb2.TopUpPoolRequest(
        org_id=c["org"], amount_millicredits=5, purchase_reference="p", purchase_amount="1e9")), INVALID),
    "top-up unknown org": (lambda c: _admin("TopUpPool", admin_pb2.TopUpPoolRequest(
        org_id="no-org-x", amount_millicredits=5, purchase_reference="p")), NOT_FOUND),
    "allocation negative": (lambda c: _admin("SetAllocation", admin_pb2.SetAllocationRequest(
        org_id=c["org"], user_id=c["user"], allocation_millicredits=-1)), INVALID),
    "allocation int64 max": (lambda c: _admin("SetAllocation", admin_pb2.SetAllocationRequest(
        org_id=c["org"], user_id=c["user"], allocation_millicredits=INT64_MAX)), INVALID),
    "grant negative": (lambda c: _admin("GrantIndividualCredits", admin_pb2.GrantIndividualCreditsRequest(
        user_id=c["user"], amount_millicredits=-5, reference="g")), INVALID),
    "grant without reference": (lambda c: _admin("GrantIndividualCredits", admin_pb2.GrantIndividualCreditsRequest(
        user_id=c["user"], amount_millicredits=5)), INVALID),
    "grant to unknown user": (lambda c: _admin("GrantIndividualCredits", admin_pb2.GrantIndividualCreditsRequest(
        user_id="ghost-" + uuid.uuid4().hex, amount_millicredits=5, reference="g")), NOT_FOUND),
    "create user with empty id": (lambda c: _admin("CreateUser", admin_pb2.CreateUserRequest()), INVALID),
    "create user with spaces in id": (lambda c: _admin("CreateUser", admin_pb2.CreateUserRequest(
        user_id="a b")), INVALID),
    "create user with SQL id": (lambda c: _admin("CreateUser", admin_pb2.CreateUserRequest(user_id=SQL)), INVALID),
    "create org with oversized name": (lambda c: _admin("CreateOrganization", admin_pb2.CreateOrganizationRequest(
        org_id="ok-" + uuid.uuid4().hex[:6], name="n" * 300)), INVALID),
    "add member with unknown role": (lambda c: _admin("AddMember", admin_pb2.AddMemberRequest(
        org_id=c["org"], user_id=c["outsider"], role=99)), INVALID),
    "create key with unknown kind": (lambda c: _admin("CreateApiKey", admin_pb2.CreateApiKeyRequest(
        user_id=c["user"], kind=7)), INVALID),
    "revoke malformed key id": (lambda c: _admin("RevokeApiKey", admin_pb2.RevokeApiKeyRequest(
        key_id="bogus")), INVALID),
    "revoke unknown key id": (lambda c: _admin("RevokeApiKey", admin_pb2.RevokeApiKeyRequest(
        key_id="ck_0123456789abcdef")), NOT_FOUND),
    "usage limit too large": (lambda c: _admin("QueryUsage", admin_pb2.QueryUsageRequest(limit=100_000)), INVALID),
    "usage unknown grouping": (lambda c: _admin("QueryUsage", admin_pb2.QueryUsageRequest(group_by=42)), INVALID),
    "usage start past year 9999": (lambda c: _admin("QueryUsage", admin_pb2.QueryUsageRequest(
        start_time=timestamp_pb2.Timestamp(seconds=2**62))), INVALID),
    "usage end with nanos out of range": (lambda c: _admin("QueryUsage", admin_pb2.QueryUsageRequest(
        end_time=timestamp_pb2.Timestamp(seconds=0, nanos=-1))), INVALID),
    "usage end before start": (lambda c: _admin("QueryUsage", admin_pb2.QueryUsageRequest(
        start_time=timestamp_pb2.Timestamp(seconds=2_000_000_000),
        end_time=timestamp_pb2.Timestamp(seconds=1_000_000_000))), INVALID),
    "list keys without user or org": (lambda c: _admin("ListApiKeys", admin_pb2.ListApiKeysRequest()), INVALID),
    "organization unknown": (lambda c: _admin("GetOrganization", admin_pb2.GetOrganizationRequest(
        org_id="nope-" + uuid.uuid4().hex[:6])), NOT_FOUND),
}


class Stubs:
    def __init__(self, spend, admin):
        self.spend = spend
        self.admin = admin


@pytest.fixture(scope="module")
def context(world, spend):
    org, user = world.funded_member(allocation_mc=100_000, pool_mc=200_000)
    hold = spend.Reserve(reserve_request(user, 1_000, org))
    return {"org": org, "user": user, "reservation": hold.reservation_id, "outsider": world.user()}


def test_the_catalogue_is_large_enough():
    assert len(CASES) >= 50


@pytest.mark.parametrize("name", list(CASES))
async def test_bad_input_is_rejected_and_writes_nothing(name, context, spend, admin, db):
    make, expected = CASES[name]
    call = make(context)
    before = await row_counts(db)
    with pytest.raises(grpc.RpcError) as raised:
        call(Stubs(spend, admin))
    error = raised.value
    assert error.code() == expected, f"{name}: {error.code()} {error.details()}"
    assert error.details(), "the error must say what is wrong"
    if expected == INVALID:
        violations = bad_request(error)
        assert violations is not None and violations.field_violations[0].field
    assert await row_counts(db) == before
