"""The audit log (issue 17): every CreditAdmin RPC that changes something appends exactly one record per call
that succeeds — actor, the person it acts for, action, target, before/after values, request id, source address,
time — in the transaction of the change; a call that fails appends none; records are immutable; secrets never
appear in them. The RPCs are enumerated from the service descriptor, so a new RPC fails
test_every_admin_rpc_says_whether_it_changes_something until it is classified, and a new changing RPC fails
test_every_changing_rpc_appends_exactly_one_record until this file calls it.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import grpc
import pytest
from conftest import uid
from payment_events import Payments, session, sign
from stripe_events import event

from credit.v1 import admin_pb2, admin_pb2_grpc
from credit_service.model import LimitScope
from credit_service.server.servicers import AdminServicer

ADMIN_RPCS = [m.name for m in admin_pb2.DESCRIPTOR.services_by_name["CreditAdmin"].methods]


def changing_rpcs() -> set[str]:
    return {name for name in ADMIN_RPCS if getattr(AdminServicer, name).audited.kind}


def test_every_admin_rpc_says_whether_it_changes_something():
    unclassified = [name for name in ADMIN_RPCS if getattr(getattr(AdminServicer, name), "audited", None) is None]
    assert not unclassified, f"say audited=Audited(...) or audited=NOT_A_CHANGE on: {unclassified}"
    # The reads are the reads: nothing that writes a row an operator would ask about is marked NOT_A_CHANGE.
    assert changing_rpcs() >= {"SetAllocation", "CreateApiKey", "RevokeApiKey", "TopUpPool", "SetRateLimit",
                               "SetAlertWebhook", "AddMember", "RemoveMember", "CreatePlatformCredential"}


class Calls:
    """Sends each call with its own request id, as the operator (ops: admin+read+mint) or the REST service
    (rest: its payments role), claiming to act for someone from some address."""

    def __init__(self, payments: Payments, tokens):
        self.stub = admin_pb2_grpc.CreditAdminStub(payments.channel)
        self.tokens = tokens
        self.payments = payments
        self.sent: dict[str, str] = {}  # request id -> RPC

    def __call__(self, name: str, request: Any, *, as_service: bool = False, on_behalf_of: str = "alice@console",
                 forwarded_for: str = "203.0.113.7") -> Any:
        request_id = f"audit-{uuid.uuid4().hex}"
        token = self.tokens.service if as_service else self.tokens.admin
        metadata = (("authorization", f"Bearer {token}"), ("x-request-id", request_id),
                    ("x-on-behalf-of", on_behalf_of), ("x-forwarded-for", forwarded_for))
        self.sent[request_id] = name  # before the call: a call that fails is looked up too
        return getattr(self.stub, name)(request, metadata=metadata, timeout=30)

    def records(self, request_id: str | None = None) -> list[dict[str, Any]]:
        """The records of the calls sent (or of one), before/after as Python values."""
        ids = list(self.sent) if request_id is None else [request_id]
        rows = self.payments.query("SELECT * FROM audit_log WHERE request_id = ANY($1::text[]) ORDER BY audit_id",
                                   ids)
        return [{**dict(r), "before": parse(r["before"]), "after": parse(r["after"])} for r in rows]


def parse(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def steps(org: str, user: str, member: str, state: dict[str, Any]) -> list[tuple[str, Callable[[], Any], dict]]:
    """One successful call of every changing RPC, in an order where each finds what it needs; each with the
    target its record must name."""
    paid = session(org, 1_000)
    payload = event("checkout.session.completed", paid)
    platform = uid("platform")
    return [
        ("CreateUser", lambda: admin_pb2.CreateUserRequest(user_id=user, display_name="Audited"),
         {"target_kind": "user", "target_id": user, "org_id": None}),
        ("CreateOrganization", lambda: admin_pb2.CreateOrganizationRequest(org_id=org, name="Audited org"),
         {"target_kind": "organization", "target_id": org, "org_id": None}),
        ("TopUpPool", lambda: admin_pb2.TopUpPoolRequest(org_id=org, amount_millicredits=50_000,
                                                         purchase_reference=uid("po")),
         {"target_kind": "organization", "target_id": org, "org_id": org}),
        ("AddMember", lambda: admin_pb2.AddMemberRequest(org_id=org, user_id=member,
                                                         role=admin_pb2.MEMBER_ROLE_ADMIN),
         {"target_kind": "member", "target_id": member, "org_id": org}),
        ("SetAllocation", lambda: admin_pb2.SetAllocationRequest(org_id=org, user_id=member,
                                                                 allocation_millicredits=3_000),
         {"target_kind": "member", "target_id": member, "org_id": org}),
        ("GrantIndividualCredits", lambda: admin_pb2.GrantIndividualCreditsRequest(
            user_id=user, amount_millicredits=1_000, reason="audit", reference=uid("grant")),
         {"target_kind": "user", "target_id": user, "org_id": None}),
        ("CreateApiKey", lambda: admin_pb2.CreateApiKeyRequest(user_id=member, org_id=org, name="audited"),
         {"target_kind": "api_key", "org_id": org}),
        ("RevokeApiKey", lambda: admin_pb2.RevokeApiKeyRequest(key_id=state["key_id"]),
         {"target_kind": "api_key", "org_id": org}),
        ("SetAlertWebhook", lambda: admin_pb2.SetAlertWebhookRequest(
            org_id=org, url="https://hooks.example.test/audit", secret=state["webhook_secret"]),
         {"target_kind": "alert_webhook", "target_id": org, "org_id": org}),
        ("CreateAlertThreshold", lambda: admin_pb2.CreateAlertThresholdRequest(
            org_id=org, kind=admin_pb2.ALERT_THRESHOLD_KIND_ABSOLUTE, value=100),
         {"target_kind": "alert_threshold", "org_id": org}),
        ("DeleteAlertThreshold", lambda: admin_pb2.DeleteAlertThresholdRequest(
            org_id=org, threshold_id=state["threshold_id"]),
         {"target_kind": "alert_threshold", "org_id": org}),
        ("RecordCheckout", lambda: admin_pb2.RecordCheckoutRequest(
            org_id=org, session_id=paid["id"], amount_minor=1_000, currency="usd", credits_millicredits=123_450,
            created_by=member),
         {"target_kind": "purchase", "target_id": paid["id"], "org_id": org}),
        ("ApplyPaymentEvent", lambda: admin_pb2.ApplyPaymentEventRequest(payload=payload, signature=sign(payload)),
         {"target_kind": "purchase", "target_id": paid["id"], "org_id": org}),
        ("SetRateLimit", lambda: admin_pb2.SetRateLimitRequest(org_id=org, requests_per_minute=600),
         {"target_kind": "rate_limit", "target_id": LimitScope("org", org, None, None).key, "org_id": org}),
        ("CreatePlatformCredential", lambda: admin_pb2.CreatePlatformCredentialRequest(
            name=platform, org_ids=[org], roles=["spend"]),
         {"target_kind": "platform_credential", "target_id": platform, "org_id": None}),
        ("RotatePlatformCredential", lambda: admin_pb2.RotatePlatformCredentialRequest(name=platform),
         {"target_kind": "platform_credential", "target_id": platform, "org_id": None}),
        ("RevokePlatformCredential", lambda: admin_pb2.RevokePlatformCredentialRequest(name=platform),
         {"target_kind": "platform_credential", "target_id": platform, "org_id": None}),
        ("RemoveMember", lambda: admin_pb2.RemoveMemberRequest(org_id=org, user_id=member),
         {"target_kind": "member", "target_id": member, "org_id": org}),
    ]


@pytest.fixture(scope="module")
def run(payments: Payments, tokens, world):
    """Every changing RPC called once, successfully; returns the calls, the secrets they handled and what
    each record must say."""
    calls = Calls(payments, tokens)
    org, user, member = uid("org"), uid("user"), world.user()
    state: dict[str, Any] = {"webhook_secret": "whsec-audit-" + uuid.uuid4().hex, "secrets": []}
    expected: dict[str, tuple[str, dict]] = {}
    for name, build, target in steps(org, user, member, state):
        as_service = name in ("RecordCheckout", "ApplyPaymentEvent")  # the payments role's
        before = set(calls.sent)
        answer = calls(name, build(), as_service=as_service)
        [request_id] = set(calls.sent) - before
        expected[name] = (request_id, target)
        if name == "CreateApiKey":
            state["key_id"] = answer.key.key_id
            state["secrets"].append(answer.secret)
        elif name == "CreateAlertThreshold":
            state["threshold_id"] = answer.threshold.threshold_id
        elif name in ("CreatePlatformCredential", "RotatePlatformCredential"):
            state["secrets"].append(answer.secret)
    state["secrets"].append(state["webhook_secret"])
    return calls, expected, state, org, member


def test_every_changing_rpc_appends_exactly_one_record(run, authority):
    calls, expected, state, org, member = run
    assert set(expected) == changing_rpcs(), \
        f"call these in steps(): {sorted(changing_rpcs() - set(expected))}"
    for name, (request_id, target) in expected.items():
        records = calls.records(request_id)
        assert len(records) == 1, f"{name} appended {len(records)} audit records"
        [record] = records
        assert record["action"] == name
        actor = "rest" if name in ("RecordCheckout", "ApplyPaymentEvent") else "ops"
        assert (record["actor"], record["actor_kind"]) == (actor, "token"), name
        assert record["on_behalf_of"] == "alice@console" and record["forwarded_for"] == "203.0.113.7", name
        assert "127.0.0.1" in record["source"], (name, record["source"])
        assert record["at"] is not None
        for field, value in target.items():
            assert record[field] == value, (name, field, record[field], value)
        assert record["target_id"], name
    key = calls.records(expected["CreateApiKey"][0])[0]
    assert key["target_id"] == state["key_id"] and key["before"] is None and key["after"]["revoked_at"] is None
    revoked = calls.records(expected["RevokeApiKey"][0])[0]
    assert revoked["before"]["revoked_at"] is None and revoked["after"]["revoked_at"] is not None
    threshold = calls.records(expected["DeleteAlertThreshold"][0])[0]
    assert threshold["target_id"] == str(state["threshold_id"])
    assert threshold["before"]["value"] == 100 and threshold["after"] is None
    removed = calls.records(expected["RemoveMember"][0])[0]
    assert removed["before"]["allocation_mc"] == 3_000 and removed["after"] is None
    paid = calls.records(expected["ApplyPaymentEvent"][0])[0]
    assert (paid["before"]["status"], paid["after"]["status"]) == ("pending", "paid")


def test_before_and_after_are_the_targets_values_in_the_changes_own_transaction(run, payments, tokens):
    calls, expected, _, org, _ = run
    topped = calls.records(expected["TopUpPool"][0])[0]
    assert topped["after"]["pool_total_mc"] - topped["before"]["pool_total_mc"] == 50_000
    allocated = calls.records(expected["SetAllocation"][0])[0]
    assert (allocated["before"]["allocation_mc"], allocated["after"]["allocation_mc"]) == (None, 3_000)
    limited = calls.records(expected["SetRateLimit"][0])[0]
    assert limited["before"] is None and limited["after"]["rpm"] == 600
    # A second change of the same target: its before is the first one's after.
    user = calls.payments.operator.CreateUser(admin_pb2.CreateUserRequest(user_id=uid("user"))).user_id
    calls("AddMember", admin_pb2.AddMemberRequest(org_id=org, user_id=user))
    for value in (2_000, 7_000):
        calls("SetAllocation", admin_pb2.SetAllocationRequest(org_id=org, user_id=user,
                                                              allocation_millicredits=value))
    rows = payments.query("SELECT before, after FROM audit_log WHERE action = 'SetAllocation' AND target_id = $1 "
                          "ORDER BY audit_id", user)
    assert [(parse(r["before"])["allocation_mc"], parse(r["after"])["allocation_mc"]) for r in rows] == [(None, 2_000),
                                                                                          (2_000, 7_000)]


def test_no_secret_is_in_the_audit_log(run, payments):
    _, _, state, _, _ = run
    dump = "\n".join(r[0] for r in payments.query("SELECT a::text FROM audit_log a"))
    assert len(state["secrets"]) == 4
    for secret in state["secrets"]:
        assert secret not in dump
        assert hashlib.sha256(secret.encode()).hexdigest() not in dump  # nor its digest (how keys are stored)
    webhook = [json.loads(r[0]) for r in payments.query(
        "SELECT after::text FROM audit_log WHERE action = 'SetAlertWebhook' AND org_id = $1", run[3])]
    assert webhook == [{"url": "https://hooks.example.test/audit", "secret_set": True,
                        "updated_at": webhook[0]["updated_at"]}]


def test_a_refused_or_failed_change_appends_nothing(payments, tokens, world):
    calls = Calls(payments, tokens)
    org, member = world.funded_member(allocation_mc=1_000, pool_mc=1_000)
    attempts = [
        ("SetAllocation", admin_pb2.SetAllocationRequest(org_id=org, user_id=member,
                                                         allocation_millicredits=5_000)),  # past the pool
        ("CreateUser", admin_pb2.CreateUserRequest(user_id=member)),  # exists
        ("RevokeApiKey", admin_pb2.RevokeApiKeyRequest(key_id="ck_0000000000000000")),  # unknown
        ("CreateUser", admin_pb2.CreateUserRequest(user_id=member, display_name="again")),  # exists
        ("RemoveMember", admin_pb2.RemoveMemberRequest(org_id=org, user_id="nobody-here")),  # not a member
        ("RotatePlatformCredential", admin_pb2.RotatePlatformCredentialRequest(name="no-such-platform")),
        ("TopUpPool", admin_pb2.TopUpPoolRequest(org_id=org, amount_millicredits=-5, purchase_reference="x")),
    ]
    for name, request in attempts:
        with pytest.raises(grpc.RpcError):
            calls(name, request)
    # Refused before the method: a role the token lacks (the REST service's token never mints).
    with pytest.raises(grpc.RpcError) as refused:
        calls("TopUpPool", admin_pb2.TopUpPoolRequest(org_id=org, amount_millicredits=5, purchase_reference="y"),
              as_service=True)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert calls.records() == []


def test_an_audited_change_that_cannot_write_its_record_does_not_happen(payments, tokens, world):
    """The record is written in the change's transaction: when its INSERT fails, the change rolls back."""
    calls = Calls(payments, tokens)
    org, member = world.funded_member(allocation_mc=1_000, pool_mc=10_000)
    payments.query(f"""CREATE TRIGGER audit_refuses_{member.replace('-', '_')} BEFORE INSERT ON audit_log
                       FOR EACH ROW WHEN (NEW.target_id = '{member}')
                       EXECUTE FUNCTION history_is_append_only()""")  # test-made names, no input
    try:
        with pytest.raises(grpc.RpcError):
            calls("SetAllocation", admin_pb2.SetAllocationRequest(org_id=org, user_id=member,
                                                                  allocation_millicredits=4_000))
    finally:
        payments.query(f"DROP TRIGGER audit_refuses_{member.replace('-', '_')} ON audit_log")
    [allocation] = payments.query("SELECT limit_mc FROM allocations WHERE org_id = $1 AND user_id = $2", org, member)
    assert allocation[0] == 1_000
    assert calls.records() == []


def test_a_replay_that_changes_nothing_is_still_recorded_once(payments, tokens, world):
    calls = Calls(payments, tokens)
    org = world.org()
    request = admin_pb2.TopUpPoolRequest(org_id=org, amount_millicredits=2_000, purchase_reference=uid("po"))
    calls("TopUpPool", request)
    calls("TopUpPool", request)  # the same reference and amount: replayed, nothing added
    records = calls.records()
    assert len(records) == 2
    assert records[1]["before"] == records[1]["after"] == records[0]["after"]


def test_the_audit_log_is_append_only(run, payments):
    for sql in ("UPDATE audit_log SET actor = 'someone else'", "DELETE FROM audit_log", "TRUNCATE audit_log"):
        with pytest.raises(asyncpg.PostgresError, match="audit_log is append-only"):
            payments.query(sql)


def test_listing_an_orgs_records_and_every_record(run, payments, tokens):
    calls, expected, _, org, _ = run
    operator = payments.operator
    mine = operator.ListAuditRecords(admin_pb2.ListAuditRecordsRequest(org_id=org, limit=1000)).records
    assert {r.org_id for r in mine} == {org}
    assert {r.action for r in mine} >= {"TopUpPool", "SetAllocation", "CreateApiKey", "SetRateLimit"}
    assert [r.audit_id for r in mine] == sorted((r.audit_id for r in mine), reverse=True)
    allocation = next(r for r in mine if r.request_id == expected["SetAllocation"][0])
    assert json.loads(allocation.after_json)["allocation_mc"] == 3_000
    assert allocation.on_behalf_of == "alice@console" and allocation.forwarded_for == "203.0.113.7"
    # Paging back from the newest, two at a time, finds the same records.
    paged, before_id = [], 0
    while True:
        page = operator.ListAuditRecords(admin_pb2.ListAuditRecordsRequest(org_id=org, limit=2,
                                                                           before_id=before_id)).records
        if not page:
            break
        paged += page
        before_id = page[-1].audit_id
    assert [r.audit_id for r in paged] == [r.audit_id for r in mine]
    # Every record, platform credentials' included, is for the operator's token (admin, mint) to see.
    everything = operator.ListAuditRecords(admin_pb2.ListAuditRecordsRequest(
        action="CreatePlatformCredential", limit=1000)).records
    assert any(r.request_id == expected["CreatePlatformCredential"][0] for r in everything)
    service = admin_pb2_grpc.CreditAdminStub(payments.channel)
    reader = (("authorization", f"Bearer {tokens.read}"),)  # read only: one org's records, not every record
    with pytest.raises(grpc.RpcError) as refused:
        service.ListAuditRecords(admin_pb2.ListAuditRecordsRequest(), metadata=reader)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert service.ListAuditRecords(admin_pb2.ListAuditRecordsRequest(org_id=org), metadata=reader).records
    bearer = (("authorization", f"Bearer {tokens.service}"),)  # the REST service's: admin (the console's operators)
    assert service.ListAuditRecords(admin_pb2.ListAuditRecordsRequest(action="CreatePlatformCredential"),
                                    metadata=bearer).records
    for bad in (admin_pb2.ListAuditRecordsRequest(org_id=org, limit=1001),
                admin_pb2.ListAuditRecordsRequest(org_id="bad org"),
                admin_pb2.ListAuditRecordsRequest(org_id=org, before_id=-1)):
        with pytest.raises(grpc.RpcError) as invalid:
            service.ListAuditRecords(bad, metadata=bearer)
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
