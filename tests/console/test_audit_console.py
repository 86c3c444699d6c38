"""The audit log in the console's API, against the real inference service, authority and PostgreSQL: a change
made through the console is recorded with the signed-in person (x-on-behalf-of) and their address
(x-forwarded-for) next to the service's token, and shows in GET /api/v1/console/audit and its CSV export;
owners and admins see their org's records only, members get 403; bad query values are 400 and change
nothing."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone

import grpc
import httpx
import pytest
from rest_support import InferenceProcess, make_key

from credit.v1 import admin_pb2, admin_pb2_grpc
from credit_service.statement_csv import AUDIT_COLUMNS

from .conftest import Org, auth
from .test_console_api import get, post

CLIENT = "127.0.0.1"  # where these tests' requests come from, as the REST service sees them


def key_id_of(inference, key: str) -> str:
    return get(inference, key, "/me").json()["key_id"]


def authority_records(admin, org_id: str, **filters) -> list[admin_pb2.AuditRecord]:
    """The org's records as the authority lists them to the operator (not through the console)."""
    return list(admin.ListAuditRecords(admin_pb2.ListAuditRecordsRequest(org_id=org_id, **filters)).records)


def test_a_console_change_names_the_person_and_their_address(console_inference, org: Org, admin):
    owner_says = f"user:{org.owner} (api_key {key_id_of(console_inference, org.keys['owner'])})"
    set_allocation = post(console_inference, org.keys["owner"], "/org/allocations",
                          {"user_id": org.member, "allocation": "250"})
    assert set_allocation.status_code == 200, set_allocation.text
    admin_says = f"user:{org.admin_user} (api_key {key_id_of(console_inference, org.keys['admin'])})"
    created = post(console_inference, org.keys["admin"], "/keys", {"user_id": org.other, "name": "laptop"})
    assert created.status_code == 200, created.text

    # What the authority stored: the service's token as actor, the person and their address as its claims.
    stored = {r.action: r for r in authority_records(admin, org.org_id, limit=2)}
    assert (stored["SetAllocation"].actor, stored["SetAllocation"].on_behalf_of,
            stored["SetAllocation"].forwarded_for) == ("console", owner_says, CLIENT)
    assert (stored["CreateApiKey"].actor, stored["CreateApiKey"].on_behalf_of,
            stored["CreateApiKey"].forwarded_for) == ("console", admin_says, CLIENT)

    # The console shows them, newest first, the change as before → after.
    page = get(console_inference, org.keys["owner"], "/audit")
    assert page.status_code == 200, page.text
    newest, allocation = page.json()["data"][:2]
    assert (newest["action"], newest["on_behalf_of"], newest["target_id"]) == \
        ("CreateApiKey", admin_says, created.json()["key_id"])
    assert newest["after"]["name"] == "laptop" and newest["before"] is None
    assert (allocation["action"], allocation["actor"], allocation["on_behalf_of"], allocation["forwarded_for"],
            allocation["target_kind"], allocation["target_id"], allocation["org_id"]) == \
        ("SetAllocation", "console", owner_says, CLIENT, "member", org.member, org.org_id)
    assert allocation["changes"] == [{"field": "allocation_mc", "before": 100_000, "after": 250_000}]
    assert page.json()["data"][0]["audit_id"] > allocation["audit_id"]

    # Filters: the person, the action, the time.
    mine = get(console_inference, org.keys["admin"], "/audit", actor=owner_says).json()["data"]
    assert [r["action"] for r in mine] == ["SetAllocation"]
    keys = get(console_inference, org.keys["owner"], "/audit", action="CreateApiKey").json()["data"]
    assert [r["on_behalf_of"] for r in keys] == [admin_says]
    later = (datetime.now(timezone.utc) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert get(console_inference, org.keys["owner"], "/audit", start=later).json()["data"] == []

    # The CSV: a header row, one row per record, the same records.
    export = get(console_inference, org.keys["owner"], "/audit/export.csv")
    assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv")
    disposition = export.headers["content-disposition"]
    assert disposition.startswith(f'attachment; filename="audit-{org.org_id}-') and disposition.endswith('.csv"')
    rows = list(csv.reader(io.StringIO(export.text)))
    assert tuple(rows[0]) == AUDIT_COLUMNS
    listed = [dict(zip(AUDIT_COLUMNS, r, strict=True)) for r in rows[1:]]
    assert [r["audit_id"] for r in listed] == [str(r["audit_id"]) for r in get(
        console_inference, org.keys["owner"], "/audit", limit=1000).json()["data"]]
    row = next(r for r in listed if r["action"] == "SetAllocation")
    assert (row["on_behalf_of"], row["forwarded_for"], row["org_id"], row["changes"]) == \
        (owner_says, CLIENT, org.org_id, "allocation_mc: 100000 -> 250000")


def test_pages_go_back_with_before_id(console_inference, org: Org):
    for amount in ("11", "12", "13"):
        assert post(console_inference, org.keys["owner"], "/org/allocations",
                    {"user_id": org.other, "allocation": amount}).status_code == 200
    first = get(console_inference, org.keys["owner"], "/audit", action="SetAllocation", limit=2).json()
    assert [r["after"]["allocation_mc"] for r in first["data"]] == [13_000, 12_000]
    assert first["next_before_id"] == first["data"][-1]["audit_id"]
    second = get(console_inference, org.keys["owner"], "/audit", action="SetAllocation", limit=2,
                 before_id=first["next_before_id"]).json()
    assert [r["after"]["allocation_mc"] for r in second["data"]][:1] == [11_000]
    assert all(r["audit_id"] < first["next_before_id"] for r in second["data"])
    # The org fixture's own allocations are older still; the last page says there is none after it.
    everything = get(console_inference, org.keys["owner"], "/audit", action="SetAllocation", limit=1000).json()
    assert everything["next_before_id"] is None
    csv_rows = list(csv.reader(io.StringIO(get(console_inference, org.keys["owner"], "/audit/export.csv",
                                               action="SetAllocation", limit=2).text)))
    assert len(csv_rows) == 3 and [r[5] for r in csv_rows[1:]] == ["SetAllocation"] * 2


def test_members_get_403_and_an_admin_sees_only_their_own_org(console_inference, org: Org, world, admin):
    post(console_inference, org.keys["owner"], "/org/allocations", {"user_id": org.member, "allocation": "90"})
    for path in ("/audit", "/audit/export.csv"):
        refused = get(console_inference, org.keys["member"], path)
        assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error", refused.text
    solo_key = make_key(admin, world.user(individual_mc=1_000))[0]
    assert get(console_inference, solo_key, "/audit").status_code == 403

    # Org B, with its own owner and a change of its own.
    org_b, owner_b = world.org(500_000), world.user()
    world.member(org_b, owner_b, 100_000, role=admin_pb2.MEMBER_ROLE_OWNER)
    key_b = make_key(admin, owner_b)[0]
    assert post(console_inference, key_b, "/org/allocations", {"user_id": owner_b, "allocation": "7"}).status_code \
        == 200
    seen_by_a = get(console_inference, org.keys["admin"], "/audit", limit=1000).json()["data"]
    assert seen_by_a and {r["org_id"] for r in seen_by_a} == {org.org_id}
    exported = list(csv.DictReader(io.StringIO(get(console_inference, org.keys["owner"], "/audit/export.csv").text)))
    assert exported and {r["org_id"] for r in exported} == {org.org_id}
    seen_by_b = get(console_inference, key_b, "/audit").json()["data"]
    assert {r["org_id"] for r in seen_by_b} == {org_b} and seen_by_b[0]["target_id"] == owner_b
    # Naming org B is refused to A's owner (not a member there), and an actor filter cannot reach past the org.
    response = get(console_inference, org.keys["owner"], "/audit", actor=f"user:{owner_b} (api_key "
                   f"{key_id_of(console_inference, key_b)})")
    assert response.json()["data"] == []
    elsewhere = httpx.get(f"{console_inference.url}/api/v1/console/audit", timeout=30,
                          headers={**auth(org.keys["owner"]), "OpenAI-Organization": org_b})
    assert elsewhere.status_code == 403 and "not a member" in elsewhere.json()["error"]["message"]


BAD_QUERIES = [
    {"limit": 0}, {"limit": "ten"}, {"limit": -1},
    {"before_id": -1}, {"before_id": "abc"}, {"before_id": 2**63}, {"before_id": "1.5"},
    {"start": "2020-13-01"}, {"start": "yesterday"}, {"end": "2024-02-30T00:00:00Z"},
    {"start": "2024-02-01T00:00:00Z", "end": "2024-01-01T00:00:00Z"}, {"start": "0001-01-01"},
    {"action": "Set Allocation"}, {"action": "x" * 65}, {"action": "SetAllocation;DROP"},
    {"actor": "x" * 201}, {"actor": "tab\there"}, {"actor": "line\nbreak"},
]


@pytest.mark.parametrize("path", ["/audit", "/audit/export.csv"])
def test_bad_query_values_are_400_and_change_nothing(console_inference, org: Org, admin, path):
    post(console_inference, org.keys["owner"], "/org/allocations", {"user_id": org.member, "allocation": "95"})
    before = authority_records(admin, org.org_id, limit=1000)
    queries = [*BAD_QUERIES, {"limit": 10_001 if path.endswith(".csv") else 1001}]
    answers = [get(console_inference, org.keys["owner"], path, **query) for query in queries]
    wrong = [(query, a.status_code, a.text[:120]) for query, a in zip(queries, answers, strict=True)
             if a.status_code != 400 or a.json()["error"]["type"] != "invalid_request_error"]
    assert not wrong, wrong
    assert authority_records(admin, org.org_id, limit=1000) == before
    # The edges themselves are fine.
    for query in ({"limit": 1}, {"limit": 10_000 if path.endswith(".csv") else 1000}, {"before_id": 0},
                  {"before_id": 2**31}, {"before_id": 2**63 - 1}):
        assert get(console_inference, org.keys["owner"], path, **query).status_code == 200, query


def test_the_csv_export_never_starts_a_cell_with_a_formula(console_inference, org: Org, console_tokens):
    """What the person behind a change is called is a claim of the caller: a formula there stays text."""
    with grpc.insecure_channel(console_inference.authority.addr) as channel:
        admin_pb2_grpc.CreditAdminStub(channel).SetAllocation(
            admin_pb2.SetAllocationRequest(org_id=org.org_id, user_id=org.member, allocation_millicredits=80_000),
            metadata=(("authorization", f"Bearer {console_tokens.console}"),
                      ("x-on-behalf-of", "=HYPERLINK(\"http://x.example\")"), ("x-forwarded-for", "@SUM(1)")),
            timeout=30)
    rows = list(csv.DictReader(io.StringIO(get(console_inference, org.keys["owner"], "/audit/export.csv").text)))
    assert (rows[0]["on_behalf_of"], rows[0]["forwarded_for"]) == ("'=HYPERLINK(\"http://x.example\")", "'@SUM(1)")
    assert get(console_inference, org.keys["owner"], "/audit").json()["data"][0]["on_behalf_of"] == \
        "=HYPERLINK(\"http://x.example\")"  # JSON is not a spreadsheet: as stored


@pytest.fixture(scope="module")
def operated(console_authority, console_tokens, models_file, world, admin):
    """A REST service whose CONSOLE_OPERATORS lists one user (an individual: no org of their own)."""
    operator = world.user()
    process = InferenceProcess(console_authority, console_tokens.console, models_file,
                               {"CONSOLE_OPERATORS": f"someone-else, {operator}"}).start()
    yield process, make_key(admin, operator)[0]
    process.stop()


def test_an_operator_sees_every_orgs_records_and_an_admin_only_their_own(operated, org: Org, admin, world):
    inference, operator_key = operated
    other_org = world.org(5_000)
    platform = f"audited-{other_org}"
    admin.CreatePlatformCredential(admin_pb2.CreatePlatformCredentialRequest(name=platform, org_ids=[other_org],
                                                                             roles=["spend"]))
    assert post(inference, org.keys["owner"], "/org/allocations",
                {"user_id": org.member, "allocation": "120"}).status_code == 200
    me = get(inference, operator_key, "/me").json()
    assert me["operator"] is True and me["view"] == "individual"
    assert get(inference, org.keys["owner"], "/me").json()["operator"] is False

    everything = get(inference, operator_key, "/audit", all_orgs="true", limit=1000).json()["data"]
    orgs = {r["org_id"] for r in everything}
    assert {org.org_id, other_org, ""} <= orgs  # records of both orgs, and one no org owns
    assert any(r["action"] == "CreatePlatformCredential" and r["target_id"] == platform for r in everything)
    export = get(inference, operator_key, "/audit/export.csv", all_orgs="true", action="CreatePlatformCredential")
    assert export.status_code == 200 and 'filename="audit-all-' in export.headers["content-disposition"]
    assert platform in export.text

    # Without all_orgs an operator with no org of their own has nothing to show; an org's owner is no operator.
    assert get(inference, operator_key, "/audit").status_code == 403
    for path in ("/audit", "/audit/export.csv"):
        refused = get(inference, org.keys["owner"], path, all_orgs="true")
        assert refused.status_code == 403 and "operator" in refused.json()["error"]["message"], refused.text
    own = get(inference, org.keys["owner"], "/audit", limit=1000).json()["data"]
    assert {r["org_id"] for r in own} == {org.org_id}
