"""Platform credentials change without restarts, on every authority process: two processes on one database,
each trusting a credential lookup CACHE seconds (CREDIT_PLATFORM_CACHE_SECONDS, the documented window). A
rotation keeps the previous secret valid for its grace period, then both refuse it; a revocation stops the
credential on both within the window."""

from __future__ import annotations

import time

import grpc
import pytest
from conftest import AuthorityProcess, Stub, uid
from helpers import reserve_request

from credit.v1 import admin_pb2, admin_pb2_grpc, authority_pb2, authority_pb2_grpc

CACHE = 0.5  # seconds; the default is 2
GRACE = 1  # seconds, the rotation's grace_seconds


@pytest.fixture(scope="module")
def pair(database_url, tokens):
    started = []
    try:
        for _ in range(2):
            started.append(AuthorityProcess(database_url, tokens, {
                "CREDIT_PLATFORM_CACHE_SECONDS": str(CACHE), "CREDIT_ACCESS_LOG": "0"}).start())
        channels = [grpc.insecure_channel(p.addr) for p in started]
        yield channels
        for channel in channels:
            channel.close()
    finally:
        for process in started:
            process.stop()


def spenders(pair, secret: str) -> list[Stub]:
    return [Stub(authority_pb2_grpc.CreditAuthorityStub(channel), secret) for channel in pair]


def balance_code(stub: Stub, user_id: str) -> grpc.StatusCode:
    try:
        stub.GetBalance(authority_pb2.GetBalanceRequest(user_id=user_id))
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        return error.code()


@pytest.fixture
def member(world):
    org_id, user_id = world.funded_member(10_000)
    return org_id, user_id


def test_rotation_keeps_the_old_secret_for_its_grace_then_both_processes_refuse_it(pair, admin, member):
    org_id, user_id = member
    name = uid("rotating")
    old = admin.CreatePlatformCredential(admin_pb2.CreatePlatformCredentialRequest(
        name=name, org_ids=[org_id], roles=["spend"])).secret
    for stub in spenders(pair, old):  # both processes have the old secret cached as the current one
        assert balance_code(stub, user_id) == grpc.StatusCode.OK
    rotated = admin.RotatePlatformCredential(admin_pb2.RotatePlatformCredentialRequest(name=name,
                                                                                       grace_seconds=GRACE))
    assert rotated.secret != old and rotated.credential.HasField("previous_secret_valid_until")
    # In the grace period both secrets work on both processes, for the same caller: a hold made with the old
    # secret is committed with the new one.
    old_stubs, new_stubs = spenders(pair, old), spenders(pair, rotated.secret)
    hold = old_stubs[0].Reserve(reserve_request(user_id, 100))
    new_stubs[1].Commit(authority_pb2.CommitRequest(reservation_id=hold.reservation_id, amount_millicredits=100))
    assert [balance_code(s, user_id) for s in old_stubs + new_stubs] == [grpc.StatusCode.OK] * 4
    # After the grace and the cache window: the old secret is refused everywhere, the new one works.
    time.sleep(GRACE + CACHE + 0.2)
    assert [balance_code(s, user_id) for s in old_stubs] == [grpc.StatusCode.UNAUTHENTICATED] * 2
    assert [balance_code(s, user_id) for s in new_stubs] == [grpc.StatusCode.OK] * 2
    listed = {c.name: c for c in admin.ListPlatformCredentials(admin_pb2.ListPlatformCredentialsRequest()).credentials}
    assert not listed[name].HasField("previous_secret_valid_until")  # its grace is over


def test_a_revoked_credential_stops_on_both_processes_within_the_cache_window(pair, admin, member, tokens):
    org_id, user_id = member
    name = uid("revoked")
    secret = admin.CreatePlatformCredential(admin_pb2.CreatePlatformCredentialRequest(
        name=name, org_ids=[org_id], roles=["spend"])).secret
    stubs = spenders(pair, secret)
    for stub in stubs:  # cached as valid on both
        stub.Reserve(reserve_request(user_id, 10))
    # Revoked through one of the two processes.
    operator = Stub(admin_pb2_grpc.CreditAdminStub(pair[0]), tokens.admin)
    revoked = operator.RevokePlatformCredential(admin_pb2.RevokePlatformCredentialRequest(name=name))
    assert revoked.credential.HasField("revoked_at")
    time.sleep(CACHE + 0.2)
    for stub in stubs:
        with pytest.raises(grpc.RpcError) as refused:
            stub.Reserve(reserve_request(user_id, 10))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Revoking again keeps the first revocation time; the name is never reused.
    again = admin.RevokePlatformCredential(admin_pb2.RevokePlatformCredentialRequest(name=name)).credential
    assert again.revoked_at == revoked.credential.revoked_at
    with pytest.raises(grpc.RpcError) as taken:
        admin.CreatePlatformCredential(admin_pb2.CreatePlatformCredentialRequest(
            name=name, org_ids=[org_id], roles=["spend"]))
    assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
