"""Platform credentials (issue #15): kept in the database, managed only by the operator's role (mint),
scoped to the organizations they name. A credential scoped to org A is tried on every RPC of both services
for users and accounts outside A: each is refused (PERMISSION_DENIED with ErrorInfo OUT_OF_SCOPE, or
ROLE_REQUIRED for what its roles never allow, or NOT_FOUND for a reservation another caller made) and
nothing is held; the same calls inside A work, and every reservation and attribution row it makes names it."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import grpc
import pytest
from conftest import Stub, uid
from google.protobuf import descriptor
from helpers import bad_request, error_info, reserve_request

from credit.v1 import admin_pb2, admin_pb2_grpc, authority_pb2, authority_pb2_grpc, types_pb2

FD = descriptor.FieldDescriptor
SERVICES = {"CreditAdmin": (admin_pb2, admin_pb2_grpc.CreditAdminStub),
            "CreditAuthority": (authority_pb2, authority_pb2_grpc.CreditAuthorityStub)}
# What the credential's roles (spend, read) open, scoped: each is refused for funding outside its orgs.
SCOPED = {"Check", "Reserve", "GetBalance", "QueryUsage", "GetStatement", "GetForecast", "GetOrganization",
          "ListMembers"}
# Commit and Release name a reservation: a credential finds only its own (reservations are scoped to the caller).
OWN_RESERVATIONS = {"Commit", "Release"}
# Open to its roles but not to platform credentials at all (OUT_OF_SCOPE whatever the request).
CLOSED = {"VerifyApiKey", "ListApiKeys", "GetAlertWebhook", "ListAlertThresholds", "ListAlertEvents", "ListPurchases",
          "ListRateLimits", "ListAuditRecords"}


def query(database_url: str, sql: str, *args) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(database_url)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()
    return asyncio.run(run())


def create(admin, name: str, org_ids: list[str], roles: list[str], individuals: bool = False) -> str:
    created = admin.CreatePlatformCredential(admin_pb2.CreatePlatformCredentialRequest(
        name=name, org_ids=org_ids, individuals=individuals, roles=roles))
    assert created.secret.startswith("cp_") and created.credential.caller == f"platform:{name}"
    return created.secret


def stubs(channel, secret: str) -> tuple[Stub, Stub]:
    return (Stub(authority_pb2_grpc.CreditAuthorityStub(channel), secret),
            Stub(admin_pb2_grpc.CreditAdminStub(channel), secret))


def refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value


def out_of_scope(call) -> None:
    error = refusal(call)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error.details()
    info = error_info(error)
    assert info is not None and info.reason == "OUT_OF_SCOPE", error.details()


@pytest.fixture(scope="module")
def people(world):
    """Org A (member a, and ab who joined A first but defaults to B), org B (member b), individual user i."""
    org_a, org_b = world.org(100_000), world.org(100_000)
    a, b, ab, i = world.user(), world.user(), world.user(), world.user(individual_mc=10_000)
    world.member(org_a, a, 10_000)
    world.member(org_b, b, 10_000)
    world.member(org_a, ab, 10_000)
    world.member(org_b, ab, 10_000, default=True)
    return {"A": org_a, "B": org_b, "a": a, "b": b, "ab": ab, "i": i}


def held(database_url: str, caller: str) -> list[tuple[str, str]]:
    return [tuple(r) for r in query(database_url, "SELECT user_id, coalesce(org_id, '') FROM reservations "
                                                  "WHERE caller = $1 AND status = 'held'", caller)]


def test_in_scope_calls_work_and_every_row_names_the_credential(channel, admin, people, database_url):
    name = uid("lead-enrich")
    spend, reader = stubs(channel, create(admin, name, [people["A"]], ["spend", "read"]))
    a, org_a = people["a"], people["A"]
    assert spend.Check(authority_pb2.CheckRequest(user_id=a, amount_millicredits=100)).allowed
    assert spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=a)).funding.org_id == org_a
    hold = spend.Reserve(reserve_request(a, 1_000))  # org resolved: a's only org, A
    assert hold.funding.org_id == org_a
    assert spend.Commit(authority_pb2.CommitRequest(reservation_id=hold.reservation_id,
                                                    amount_millicredits=700)).charged_millicredits == 700
    # ab joined A first but defaults to B: naming A explicitly is in scope.
    other = spend.Reserve(reserve_request(people["ab"], 500, org_a))
    spend.Release(authority_pb2.ReleaseRequest(reservation_id=other.reservation_id, reason="test"))
    [row] = query(database_url, "SELECT r.caller, u.caller AS usage_caller FROM reservations r "
                                "JOIN usage_attribution u USING (reservation_id) WHERE r.reservation_id = $1",
                  uuid.UUID(hold.reservation_id))
    assert tuple(row) == (f"platform:{name}", f"platform:{name}")
    usage = reader.QueryUsage(admin_pb2.QueryUsageRequest(org_id=org_a, user_id=a))
    assert [(r.reservation_id, r.caller) for r in usage.records] == [(hold.reservation_id, f"platform:{name}")]
    assert reader.GetOrganization(admin_pb2.GetOrganizationRequest(org_id=org_a)).org_id == org_a
    assert {m.user_id for m in reader.ListMembers(admin_pb2.ListMembersRequest(org_id=org_a)).members} \
        == {a, people["ab"]}
    request = admin_pb2.GetStatementRequest(account=admin_pb2.AccountRef(org_id=org_a, user_id=a))
    request.start_time.FromSeconds(int(time.time()) - 3600)
    statement = reader.GetStatement(request)
    assert statement.usage_millicredits == 700
    reader.GetForecast(admin_pb2.GetForecastRequest(account=admin_pb2.AccountRef(org_id=org_a)))
    assert held(database_url, f"platform:{name}") == []


def scoped_attempts(people) -> dict[str, list]:
    """Requests outside org A for each scoped RPC: another org named, a user whose funding resolves elsewhere
    (B by default, an individual balance), and A's member naming B."""
    a, b, ab, i, org_b = people["a"], people["b"], people["ab"], people["i"], people["B"]
    targets = [(b, ""), (b, org_b), (a, org_b), (ab, ""), (ab, org_b), (i, "")]
    return {
        "Check": [authority_pb2.CheckRequest(user_id=u, org_id=o, amount_millicredits=1) for u, o in targets],
        "Reserve": [reserve_request(u, 1, o) for u, o in targets],
        "GetBalance": [authority_pb2.GetBalanceRequest(user_id=u, org_id=o) for u, o in targets],
        "QueryUsage": [admin_pb2.QueryUsageRequest(org_id=org_b), admin_pb2.QueryUsageRequest(user_id=b),
                       admin_pb2.QueryUsageRequest(user_id=i), admin_pb2.QueryUsageRequest()],
        "GetStatement": [admin_pb2.GetStatementRequest(account=admin_pb2.AccountRef(org_id=org_b)),
                         admin_pb2.GetStatementRequest(account=admin_pb2.AccountRef(org_id=org_b, user_id=b)),
                         admin_pb2.GetStatementRequest(account=admin_pb2.AccountRef(user_id=i))],
        "GetForecast": [admin_pb2.GetForecastRequest(account=admin_pb2.AccountRef(org_id=org_b)),
                        admin_pb2.GetForecastRequest(account=admin_pb2.AccountRef(user_id=i))],
        "GetOrganization": [admin_pb2.GetOrganizationRequest(org_id=org_b)],
        "ListMembers": [admin_pb2.ListMembersRequest(org_id=org_b)],
    }


def generic_request(request_cls, people):
    """A request aimed at org B and its member, for the RPCs a platform credential's roles never open."""
    request = request_cls()
    for field in request_cls.DESCRIPTOR.fields:
        if field.name == "org_id":
            setattr(request, field.name, people["B"])
        elif field.name == "user_id":
            setattr(request, field.name, people["b"])
        elif field.type == FD.TYPE_STRING and not field.is_repeated:
            setattr(request, field.name, f"x-{uuid.uuid4().hex[:8]}")
    return request


def test_a_credential_scoped_to_one_org_is_refused_on_every_rpc_outside_it(channel, admin, spend, people,
                                                                          database_url):
    """Every RPC of both services, enumerated from the descriptors (a new RPC must be classified here)."""
    name = uid("scoped")
    secret = create(admin, name, [people["A"]], ["spend", "read"])
    platform = {"CreditAuthority": stubs(channel, secret)[0], "CreditAdmin": stubs(channel, secret)[1]}
    # A reservation of org B's member made by another caller (the static spend token).
    theirs = spend.Reserve(reserve_request(people["b"], 2_000)).reservation_id
    attempts = scoped_attempts(people)
    seen = set()
    for service, (module, _) in SERVICES.items():
        for method in module.DESCRIPTOR.services_by_name[service].methods:
            call = getattr(platform[service], method.name)
            request_cls = getattr(module, method.input_type.name)
            seen.add(method.name)
            if method.name in SCOPED:
                for request in attempts[method.name]:
                    out_of_scope(lambda c=call, r=request: c(r))
            elif method.name in OWN_RESERVATIONS:
                request = request_cls(reservation_id=theirs, amount_millicredits=1) if method.name == "Commit" \
                    else request_cls(reservation_id=theirs, reason="not yours")
                assert refusal(lambda c=call, r=request: c(r)).code() == grpc.StatusCode.NOT_FOUND
            elif method.name in CLOSED:
                request = generic_request(request_cls, people)
                out_of_scope(lambda c=call, r=request: c(r))
            else:  # admin, mint and payments RPCs: its roles never allow them
                request = generic_request(request_cls, people)
                error = refusal(lambda c=call, r=request: c(r))
                assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (method.name, error.details())
                assert error_info(error).reason == "ROLE_REQUIRED", method.name
    assert SCOPED | OWN_RESERVATIONS | CLOSED <= seen
    # Nothing held or written by the credential; the other caller's hold is still held, uncharged.
    assert query(database_url, "SELECT count(*) FROM reservations WHERE caller = $1", f"platform:{name}")[0][0] == 0
    [row] = query(database_url, "SELECT status FROM reservations WHERE reservation_id = $1", uuid.UUID(theirs))
    assert row["status"] == "held"
    spend.Release(authority_pb2.ReleaseRequest(reservation_id=theirs, reason="test done"))


def test_individual_balances_only_when_allowed_and_read_only_with_the_read_role(channel, admin, people,
                                                                                database_url):
    name = uid("solo-billing")
    spend, reader = stubs(channel, create(admin, name, [people["A"]], ["spend"], individuals=True))
    hold = spend.Reserve(reserve_request(people["i"], 300))
    assert hold.funding.kind == types_pb2.Funding.INDIVIDUAL
    spend.Commit(authority_pb2.CommitRequest(reservation_id=hold.reservation_id, amount_millicredits=300))
    out_of_scope(lambda: spend.Reserve(reserve_request(people["b"], 1)))  # still not org B
    error = refusal(lambda: reader.QueryUsage(admin_pb2.QueryUsageRequest(user_id=people["i"])))
    assert error_info(error).reason == "ROLE_REQUIRED"  # spend only
    # A reader allowed individual balances sees only individual usage when it names no org.
    _, usage_reader = stubs(channel, create(admin, uid("solo-reader"), [], ["read"], individuals=True))
    usage = usage_reader.QueryUsage(admin_pb2.QueryUsageRequest(user_id=people["i"]))
    assert [r.reservation_id for r in usage.records] == [hold.reservation_id]
    assert usage_reader.QueryUsage(admin_pb2.QueryUsageRequest()).records  # individual rows only
    assert all(not r.org_id for r in usage_reader.QueryUsage(admin_pb2.QueryUsageRequest()).records)
    assert held(database_url, f"platform:{name}") == []


def test_only_the_operators_role_manages_credentials_and_bad_input_writes_nothing(channel, admin, people, tokens):
    rest = Stub(admin_pb2_grpc.CreditAdminStub(channel), tokens.service)  # spend+read+admin+payments, never mint
    name = uid("denied")
    for call in (lambda: rest.CreatePlatformCredential(admin_pb2.CreatePlatformCredentialRequest(
                     name=name, org_ids=[people["A"]], roles=["spend"])),
                 lambda: rest.ListPlatformCredentials(admin_pb2.ListPlatformCredentialsRequest()),
                 lambda: rest.RotatePlatformCredential(admin_pb2.RotatePlatformCredentialRequest(name=name)),
                 lambda: rest.RevokePlatformCredential(admin_pb2.RevokePlatformCredentialRequest(name=name))):
        error = refusal(call)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED and error_info(error).reason == "ROLE_REQUIRED"

    org = people["A"]
    bad = [(dict(name="", org_ids=[org], roles=["spend"]), "name"),
           (dict(name="Has Space", org_ids=[org], roles=["spend"]), "name"),
           (dict(name="x" * 65, org_ids=[org], roles=["spend"]), "name"),
           (dict(name=name, org_ids=[org], roles=[]), "roles"),
           (dict(name=name, org_ids=[org], roles=["spend", "admin"]), "roles"),
           (dict(name=name, org_ids=[org], roles=["mint"]), "roles"),
           (dict(name=name, org_ids=[], roles=["spend"]), "org_ids"),
           (dict(name=name, org_ids=["bad org!"], roles=["spend"]), "org_ids")]
    for fields, field in bad:
        error = refusal(lambda f=fields: admin.CreatePlatformCredential(admin_pb2.CreatePlatformCredentialRequest(**f)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
        assert [v.field for v in bad_request(error).field_violations] == [field], fields
    error = refusal(lambda: admin.CreatePlatformCredential(admin_pb2.CreatePlatformCredentialRequest(
        name=name, org_ids=[org, uid("no-such-org")], roles=["spend"])))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    listed = admin.ListPlatformCredentials(admin_pb2.ListPlatformCredentialsRequest()).credentials
    assert name not in {c.name for c in listed}

    create(admin, name, [org, org], ["read", "spend", "spend"])
    [shown] = [c for c in admin.ListPlatformCredentials(admin_pb2.ListPlatformCredentialsRequest()).credentials
               if c.name == name]
    assert (list(shown.org_ids), list(shown.roles), shown.created_by) == ([org], ["read", "spend"], "ops")
    error = refusal(lambda: create(admin, name, [org], ["spend"]))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    for grace in (-1, 7 * 24 * 3600 + 1):
        error = refusal(lambda g=grace: admin.RotatePlatformCredential(admin_pb2.RotatePlatformCredentialRequest(
            name=name, grace_seconds=g)))
        assert [v.field for v in bad_request(error).field_violations] == ["grace_seconds"]
    error = refusal(lambda: admin.RotatePlatformCredential(admin_pb2.RotatePlatformCredentialRequest(
        name=uid("unknown"))))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    admin.RevokePlatformCredential(admin_pb2.RevokePlatformCredentialRequest(name=name))
    error = refusal(lambda: admin.RotatePlatformCredential(admin_pb2.RotatePlatformCredentialRequest(name=name)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_rotation_without_grace_seconds_keeps_the_old_secret_an_hour(admin, people):
    name = uid("default-grace")
    create(admin, name, [people["A"]], ["spend"])
    rotated = admin.RotatePlatformCredential(admin_pb2.RotatePlatformCredentialRequest(name=name)).credential
    grace = rotated.previous_secret_valid_until.ToSeconds() - rotated.rotated_at.ToSeconds()
    assert 3599 <= grace <= 3600
