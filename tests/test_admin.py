"""CreditAdmin: pools, allocations, grants, members and API keys keep the money rules."""

from __future__ import annotations

import grpc
import pytest
from helpers import error_info, reserve_request
from invariants import assert_invariants

from credit.v1 import admin_pb2, authority_pb2


def _code(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value


async def test_top_up_is_visible_in_get_organization(world, admin, db):
    org = world.org()
    world.top_up(org, 7_000)
    after = world.top_up(org, 3_000)
    assert (after.pool_total_millicredits, after.unallocated_millicredits) == (10_000, 10_000)
    got = admin.GetOrganization(admin_pb2.GetOrganizationRequest(org_id=org))
    assert (got.pool_total_millicredits, got.allocated_millicredits, got.used_millicredits) == (10_000, 0, 0)
    await assert_invariants(db)


async def test_top_up_with_the_same_purchase_reference_counts_once(world, admin, db):
    org = world.org()
    request = admin_pb2.TopUpPoolRequest(org_id=org, amount_millicredits=5_000, purchase_reference="inv-1",
                                         purchase_amount="5.00", purchase_currency="USD")
    admin.TopUpPool(request)
    assert admin.TopUpPool(request).pool_total_millicredits == 5_000
    request.amount_millicredits = 6_000
    assert _code(lambda: admin.TopUpPool(request)).code() == grpc.StatusCode.ALREADY_EXISTS
    await assert_invariants(db)


async def test_allocating_past_the_unallocated_credits_fails(world, admin, db):
    org = world.org(10_000)
    alice, bob = world.user(), world.user()
    world.member(org, alice, 6_000)
    world.member(org, bob)
    error = _code(lambda: world.allocate(org, bob, 4_001))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(error).metadata["available"] == "4000"
    assert world.allocate(org, bob, 4_000).allocation_millicredits == 4_000
    got = admin.GetOrganization(admin_pb2.GetOrganizationRequest(org_id=org))
    assert (got.allocated_millicredits, got.unallocated_millicredits) == (10_000, 0)
    await assert_invariants(db)


async def test_lowering_an_allocation_below_used_plus_held_fails(world, spend, admin, db):
    org, user = world.funded_member(allocation_mc=10_000)
    hold = spend.Reserve(reserve_request(user, 3_000, org))
    spend.Commit(authority_pb2.CommitRequest(reservation_id=hold.reservation_id, amount_millicredits=2_000))
    spend.Reserve(reserve_request(user, 1_000, org))
    error = _code(lambda: world.allocate(org, user, 2_999))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(error)  # callers act on the reason and its figures, never on the message
    assert info is not None and info.reason == "ALLOCATION_BELOW_COMMITTED"
    assert dict(info.metadata) == {"allocation": "2999", "committed": "3000", "user_id": user}
    member = world.allocate(org, user, 3_000)
    assert (member.allocation_millicredits, member.available_millicredits) == (3_000, 0)
    got = admin.GetOrganization(admin_pb2.GetOrganizationRequest(org_id=org))
    assert (got.unallocated_millicredits, got.used_millicredits, got.held_millicredits) == (7_000, 2_000, 1_000)
    await assert_invariants(db)


async def test_list_members_shows_each_allocation(world, admin):
    org = world.org(10_000)
    alice, bob = world.user(), world.user()
    world.member(org, alice, 6_000, role=admin_pb2.MEMBER_ROLE_OWNER)
    world.member(org, bob)
    members = admin.ListMembers(admin_pb2.ListMembersRequest(org_id=org)).members
    assert [(m.user_id, m.role, m.allocation_millicredits) for m in members] == [
        (alice, admin_pb2.MEMBER_ROLE_OWNER, 6_000), (bob, admin_pb2.MEMBER_ROLE_MEMBER, 0)]


async def test_removing_a_member_returns_the_unused_allocation_to_the_pool(world, spend, admin, db):
    org, user = world.funded_member(allocation_mc=10_000)
    hold = spend.Reserve(reserve_request(user, 3_000, org))
    assert _code(lambda: admin.RemoveMember(admin_pb2.RemoveMemberRequest(org_id=org, user_id=user))).code() \
        == grpc.StatusCode.FAILED_PRECONDITION
    spend.Commit(authority_pb2.CommitRequest(reservation_id=hold.reservation_id, amount_millicredits=2_500))
    removed = admin.RemoveMember(admin_pb2.RemoveMemberRequest(org_id=org, user_id=user))
    assert removed.returned_to_pool_millicredits == 7_500
    got = admin.GetOrganization(admin_pb2.GetOrganizationRequest(org_id=org))
    assert (got.allocated_millicredits, got.unallocated_millicredits, got.used_millicredits) == (2_500, 7_500, 2_500)
    assert _code(lambda: spend.Reserve(reserve_request(user, 1, org))).code() == grpc.StatusCode.PERMISSION_DENIED
    await assert_invariants(db)


async def test_individual_grants_add_up_and_are_idempotent_by_reference(world, admin, spend, db):
    user = world.user()
    grant = admin_pb2.GrantIndividualCreditsRequest(user_id=user, amount_millicredits=2_000, reference="promo-1")
    admin.GrantIndividualCredits(grant)
    assert admin.GrantIndividualCredits(grant).limit_millicredits == 2_000
    admin.GrantIndividualCredits(admin_pb2.GrantIndividualCreditsRequest(user_id=user, amount_millicredits=500,
                                                                          reference="promo-2"))
    assert spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=user)).available_millicredits == 2_500
    await assert_invariants(db)


async def test_duplicates_are_already_exists(world, admin):
    user = world.user()
    org = world.org()
    assert _code(lambda: admin.CreateUser(admin_pb2.CreateUserRequest(user_id=user))).code() \
        == grpc.StatusCode.ALREADY_EXISTS
    assert _code(lambda: admin.CreateOrganization(admin_pb2.CreateOrganizationRequest(org_id=org))).code() \
        == grpc.StatusCode.ALREADY_EXISTS
    world.member(org, user)
    assert _code(lambda: world.member(org, user)).code() == grpc.StatusCode.ALREADY_EXISTS


async def test_api_keys_are_stored_as_hashes_verified_and_revocable(world, admin, db):
    org, user = world.funded_member(allocation_mc=1_000)
    created = admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(user_id=user, org_id=org, name="laptop"))
    secret = created.secret
    assert secret.startswith(created.key.key_id + ".") and len(secret) > 40
    stored = await db.fetchrow("SELECT * FROM api_keys WHERE key_id = $1", created.key.key_id)
    assert secret.encode() not in bytes(stored["secret_hash"]) and len(stored["secret_hash"]) == 32
    assert secret not in str(dict(stored))

    verified = admin.VerifyApiKey(admin_pb2.VerifyApiKeyRequest(secret=secret))
    assert verified.valid and (verified.key.user_id, verified.key.org_id) == (user, org)
    tampered = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert not admin.VerifyApiKey(admin_pb2.VerifyApiKeyRequest(secret=tampered)).valid
    assert not admin.VerifyApiKey(admin_pb2.VerifyApiKeyRequest(secret="ck_0000000000000000.nope")).valid
    assert not admin.VerifyApiKey(admin_pb2.VerifyApiKeyRequest(secret="garbage")).valid

    listed = admin.ListApiKeys(admin_pb2.ListApiKeysRequest(user_id=user)).keys
    assert [k.key_id for k in listed] == [created.key.key_id]
    revoked = admin.RevokeApiKey(admin_pb2.RevokeApiKeyRequest(key_id=created.key.key_id))
    assert revoked.HasField("revoked_at")
    assert not admin.VerifyApiKey(admin_pb2.VerifyApiKeyRequest(secret=secret)).valid


def test_service_keys_need_an_org_and_keys_need_membership(world, admin):
    user = world.user()
    org = world.org()
    error = _code(lambda: admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(
        user_id=user, kind=admin_pb2.API_KEY_KIND_SERVICE)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = _code(lambda: admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(user_id=user, org_id=org)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    world.member(org, user, role=admin_pb2.MEMBER_ROLE_ADMIN)
    key = admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(user_id=user, org_id=org,
                                                           kind=admin_pb2.API_KEY_KIND_SERVICE))
    assert key.key.kind == admin_pb2.API_KEY_KIND_SERVICE
