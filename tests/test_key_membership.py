"""API keys do not outlive the membership they were issued under (issue 11, item 4).

A key bound to an organization bills that organization's credits; once its
owner leaves the organization (or, for a service key that may act for other
members, stops being an owner or admin there) the key must stop working:
RemoveMember revokes the member's keys bound to that org in the same
transaction, and VerifyApiKey checks membership and role at every use.
"""

from __future__ import annotations

import grpc
import pytest

from credit.v1 import admin_pb2


def _key(admin, user_id: str, org_id: str = "", service: bool = False) -> tuple[str, str]:
    created = admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(
        user_id=user_id, org_id=org_id, name="test",
        kind=admin_pb2.API_KEY_KIND_SERVICE if service else admin_pb2.API_KEY_KIND_USER))
    return created.secret, created.key.key_id


def _valid(admin, secret: str) -> bool:
    return admin.VerifyApiKey(admin_pb2.VerifyApiKeyRequest(secret=secret)).valid


def _revoked(admin, user_id: str) -> dict[str, bool]:
    keys = admin.ListApiKeys(admin_pb2.ListApiKeysRequest(user_id=user_id)).keys
    return {k.key_id: k.HasField("revoked_at") for k in keys}


def test_removing_a_member_revokes_their_keys_bound_to_that_org(world, admin):
    org, other_org = world.org(pool_mc=10_000), world.org(pool_mc=10_000)
    boss, colleague = world.user(), world.user()
    world.member(org, boss, 1_000, role=admin_pb2.MEMBER_ROLE_ADMIN)
    world.member(org, colleague, 1_000)
    world.member(other_org, boss, 1_000, role=admin_pb2.MEMBER_ROLE_OWNER)
    user_key, user_key_id = _key(admin, boss, org)
    service_key, service_key_id = _key(admin, boss, org, service=True)
    unbound_key, unbound_key_id = _key(admin, boss)
    elsewhere_key, elsewhere_key_id = _key(admin, boss, other_org, service=True)
    colleague_key, colleague_key_id = _key(admin, colleague, org)
    assert all(_valid(admin, s) for s in (user_key, service_key, unbound_key, elsewhere_key, colleague_key))

    admin.RemoveMember(admin_pb2.RemoveMemberRequest(org_id=org, user_id=boss))

    assert not _valid(admin, user_key), "a user key bound to the org still works after its owner left"
    assert not _valid(admin, service_key), "a service key still bills other members after its owner left"
    assert _revoked(admin, boss) == {user_key_id: True, service_key_id: True, unbound_key_id: False,
                                     elsewhere_key_id: False}
    assert _revoked(admin, colleague) == {colleague_key_id: False}
    assert all(_valid(admin, s) for s in (unbound_key, elsewhere_key, colleague_key))


def test_a_re_added_member_does_not_get_revoked_keys_back(world, admin):
    org = world.org(pool_mc=10_000)
    user = world.user()
    world.member(org, user, 1_000, role=admin_pb2.MEMBER_ROLE_OWNER)
    user_key, _ = _key(admin, user, org)
    service_key, _ = _key(admin, user, org, service=True)
    admin.RemoveMember(admin_pb2.RemoveMemberRequest(org_id=org, user_id=user))
    world.member(org, user, role=admin_pb2.MEMBER_ROLE_OWNER)
    assert not _valid(admin, user_key)
    assert not _valid(admin, service_key)
    fresh, _ = _key(admin, user, org, service=True)
    assert _valid(admin, fresh)


async def test_verify_checks_membership_and_role_at_use(world, admin, db):
    """Changes made outside RemoveMember (a demotion: there is no role-change RPC, so the test
    changes org_members.role in SQL; a membership row deleted directly) count at the next use."""
    org = world.org(pool_mc=10_000)
    owner, member = world.user(), world.user()
    world.member(org, owner, 1_000, role=admin_pb2.MEMBER_ROLE_OWNER)
    world.member(org, member, 1_000)
    service_key, _ = _key(admin, owner, org, service=True)
    owner_user_key, _ = _key(admin, owner, org)
    member_key, _ = _key(admin, member, org)
    assert _valid(admin, service_key) and _valid(admin, owner_user_key) and _valid(admin, member_key)

    await db.execute("UPDATE org_members SET role = 'member' WHERE org_id = $1 AND user_id = $2", org, owner)
    assert not _valid(admin, service_key), "a demoted owner's service key still acts for the org's members"
    assert _valid(admin, owner_user_key), "a member's own user key keeps working"
    await db.execute("UPDATE org_members SET role = 'admin' WHERE org_id = $1 AND user_id = $2", org, owner)
    assert _valid(admin, service_key)

    await db.execute("DELETE FROM org_members WHERE org_id = $1 AND user_id = $2", org, member)
    assert not _valid(admin, member_key), "a key bound to an org its owner no longer belongs to"


def test_a_service_key_needs_an_owner_or_admin(world, admin):
    org = world.org()
    member = world.user()
    world.member(org, member)
    with pytest.raises(grpc.RpcError) as raised:
        _key(admin, member, org, service=True)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "owner or admin" in raised.value.details()
    assert _valid(admin, _key(admin, member, org)[0])
