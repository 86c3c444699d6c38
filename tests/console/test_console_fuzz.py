"""Fuzzing the console's API as an org owner, so the calls get past the role check: valid requests
with one field mutated at a time (tests/rest_fuzz.py), checked by schemathesis (never a 5xx, never an
undocumented status); every admin operation answers 2xx a number of times; afterwards the database
agrees with what the owner was told (allocations, keys, thresholds; no top-up: the console cannot create
credits, so the pool keeps its top-ups and its total) and the invariants hold."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import schemathesis
from hypothesis import HealthCheck, given, note, settings
from invariants import violations
from rest_fuzz import Request, Target, find_operation, one_field_mutations, send, status_table
from rest_support import make_key

from credit.v1 import admin_pb2

from .conftest import Org, chat

API = "/api/v1/console"
USAGE_FIELDS = (("query", "start"), ("query", "end"), ("query", "user_id"), ("query", "limit"),
                ("headers", "OpenAI-Organization"))
AUDIT_FIELDS = tuple(("query", name) for name in ("actor", "action", "start", "end", "before_id", "limit"))


def credits_mc(value: Any) -> int:
    """What the client asked for, in millicredits (the request it sent, not the service's parser)."""
    return int(Decimal(str(value).strip()) * 1000)


async def pool_of(database_url: str, org_id: str) -> tuple[set[str], int]:
    conn = await asyncpg.connect(database_url)
    try:
        references = {r["purchase_reference"] for r in await conn.fetch(
            "SELECT purchase_reference FROM pool_top_ups WHERE org_id = $1", org_id)}
        return references, await conn.fetchval("SELECT total_mc FROM org_pools WHERE org_id = $1", org_id)
    finally:
        await conn.close()


def test_the_console_admin_api_fuzzed_as_an_owner(console_inference, org: Org, world, admin, receiver, database_url):
    for key in (org.keys["member"], org.keys["owner"]):  # usage to report
        chat(console_inference, key)
    # Org-bound keys of a member and thresholds, for the deletions to name (the fuzz's own creations add more).
    revocable = [make_key(admin, org.member, org.org_id)[1] for _ in range(40)]
    thresholds = [admin.CreateAlertThreshold(admin_pb2.CreateAlertThresholdRequest(
        org_id=org.org_id, user_id=user, kind=admin_pb2.ALERT_THRESHOLD_KIND_PERCENT, value=1)).threshold.threshold_id
        for user in (org.member, org.other, "") for _ in range(10)]
    members = itertools.cycle([org.member, org.other, org.admin_user])
    # Amounts with fractions of a credit, so every acknowledged change also checks the parsing of millicredits.
    allocations = itertools.cycle(["60.5", "75.25", 80.125, "120.001", 0.5, "100"])
    owner_headers = {"OpenAI-Organization": org.org_id}
    edges_org = {("headers", "OpenAI-Organization"): [org.org_id, "", "no-such-org", org.org_id.upper(), "x" * 129]}
    usage_edges = {("query", "start"): ["2020-01-01", "1970-01-01T00:00:00Z", "9999-01-01", "2020-13-01"],
                   ("query", "end"): ["2100-01-01T00:00:00+01:00", "2020-01-01", "10000-01-01"],
                   ("query", "user_id"): [org.owner, org.admin_user, org.other, "", "nobody", "a b"],
                   ("query", "limit"): [1, 1000, 10_000, 10_001, 0], **edges_org}

    def get(name: str, path: str, query: dict[str, Any] | None = None, fields=(), edges=None) -> Target:
        return Target(name, "GET", path, lambda: Request(query=dict(query or {}), headers=dict(owner_headers)),
                      (*fields, ("headers", "OpenAI-Organization")), {**edges_org, **(edges or {})})

    def post(name: str, path: str, body, edges) -> Target:
        sample = body()
        return Target(name, "POST", path, lambda: Request(body=body(), headers=dict(owner_headers)),
                      (*(("body", f) for f in sample), ("body", "unknown_field"), ("headers", "OpenAI-Organization")),
                      {**edges_org, **{("body", f): v for f, v in edges.items()}})

    def delete(name: str, path: str, parameter: str, pool: list, made_up: Any, edges) -> Target:
        return Target(name, "DELETE", path,
                      lambda: Request(path={parameter: pool.pop() if pool else made_up}, headers=dict(owner_headers)),
                      (("path", parameter), ("headers", "OpenAI-Organization")),
                      {**edges_org, ("path", parameter): edges})

    usage = {"start": "2020-01-01", "end": "2100-01-01T00:00:00Z", "user_id": org.member}
    audit = {"action": "SetAllocation", "start": "2020-01-01", "limit": 20}
    audit_edges = {("query", "actor"): ["", "console", f"user:{org.owner} (session)", "x" * 200, "x" * 201, "a\tb"],
                   ("query", "action"): ["", "CreateApiKey", "Set Allocation", "x" * 65],
                   ("query", "before_id"): [0, 1, 2**31, 2**63 - 1, 2**63, -1],
                   ("query", "limit"): [1, 1000, 1001, 0], ("query", "start"): usage_edges[("query", "start")],
                   ("query", "end"): usage_edges[("query", "end")]}
    targets = [
        get("me", f"{API}/me"),
        get("org", f"{API}/org"),
        post("allocations", f"{API}/org/allocations",
             lambda: {"user_id": next(members), "allocation": next(allocations)},
             {"user_id": [org.owner, org.member, "nobody", ""],
              "allocation": ["0", 0, "0.001", "12.5", 99.999, 1, "0.0001", "1e3", -1, "999999999999.999", 10**13,
                             True, "1,5"]}),
        get("keys", f"{API}/keys"),
        post("create-key", f"{API}/keys", lambda: {"user_id": next(members), "name": "fuzz key"},
             {"user_id": ["", org.owner, "nobody"], "name": ["", "x" * 256, "x" * 257, "tab\there"]}),
        delete("revoke-key", f"{API}/keys/{{key_id}}", "key_id", revocable, "ck_0000000000000000",
               ["ck_0000000000000000", "ck_XYZ", " ", "ck_" + "f" * 17]),
        get("usage-summary", f"{API}/usage/summary", usage, USAGE_FIELDS[:3], usage_edges),
        get("usage-records", f"{API}/usage/records", {**usage, "limit": 20}, USAGE_FIELDS, usage_edges),
        get("usage-csv", f"{API}/usage/export.csv", {**usage, "limit": 20}, USAGE_FIELDS, usage_edges),
        get("alerts", f"{API}/alerts", {"limit": 20}, (("query", "limit"),), {("query", "limit"): [1, 1000, 1001]}),
        post("webhook", f"{API}/alerts/webhook", lambda: {"url": receiver.url, "secret": "s" * 24},
             {"url": ["", receiver.url + "?a=1", "ftp://example.com/x", "http://user:pw@example.com/",
                      "https://example.com/" + "x" * 3000],
              "secret": ["", "s" * 15, "s" * 16, "s" * 256, "s" * 257]}),
        post("threshold", f"{API}/alerts/thresholds",
             lambda: {"user_id": next(members), "kind": "absolute", "value": "10"},
             {"user_id": ["", org.owner, "nobody"], "kind": ["percent", "absolute", "relative", ""],
              "value": ["0", 100, "100.0", 101, "12.5", "-1", True]}),
        delete("delete-threshold", f"{API}/alerts/thresholds/{{threshold_id}}", "threshold_id", thresholds, 2**62,
               [1, 0, -1, 2**63 - 1, 2**63]),
        get("audit", f"{API}/audit", audit, AUDIT_FIELDS, audit_edges),
        get("audit-csv", f"{API}/audit/export.csv", audit, AUDIT_FIELDS,
            {**audit_edges, ("query", "limit"): [1, 10_000, 10_001, 0]}),
    ]
    examples = {"allocations": 80, "create-key": 50, "revoke-key": 50, "webhook": 50,
                "threshold": 60, "delete-threshold": 50}
    counts: Counter[tuple[str, int]] = Counter()
    told: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}  # target -> (body sent, 2xx answer)
    schema = schemathesis.openapi.from_url(f"{console_inference.url}/openapi.json")
    initial_top_ups, initial_total = asyncio.run(pool_of(database_url, org.org_id))

    with httpx.Client(base_url=console_inference.url, timeout=60) as client:
        def fuzzer(target: Target, operation: Any):
            @given(request=one_field_mutations(target, operation))
            @settings(max_examples=examples.get(target.name, 30), deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def fuzz(request: Request) -> None:
                note(request.mutation)
                response = send(client, operation, target, request, {"Authorization": f"Bearer {org.keys['owner']}"})
                counts[target.name, response.status_code] += 1
                if response.is_success and target.method != "GET":
                    told.setdefault(target.name, []).append((request.body if target.method == "POST"
                                                             else request.path, response.json()))
                    if target.name == "threshold":
                        thresholds.append(response.json()["threshold_id"])
                    if target.name == "create-key":
                        revocable.append(response.json()["key_id"])

            return fuzz

        for target in targets:
            fuzzer(target, find_operation(schema, target.method, target.path))()

    print(f"\nconsole fuzz as an owner, statuses by operation:\n{status_table(counts)}")
    for target in targets:
        assert sum(n for (name, status), n in counts.items() if name == target.name and 200 <= status < 300) > 0, \
            f"no 2xx for {target.name}: {status_table(counts)}"

    async def database():
        conn = await asyncpg.connect(database_url)
        try:
            return (await conn.fetch("SELECT purchase_reference, amount_mc FROM pool_top_ups WHERE org_id = $1",
                                     org.org_id),
                    await conn.fetchval("SELECT total_mc FROM org_pools WHERE org_id = $1", org.org_id),
                    {r["user_id"]: r["limit_mc"] for r in await conn.fetch(
                        "SELECT user_id, limit_mc FROM allocations WHERE org_id = $1", org.org_id)},
                    {r["key_id"]: r["revoked_at"] for r in await conn.fetch(
                        "SELECT key_id, revoked_at FROM api_keys WHERE org_id = $1", org.org_id)},
                    {r["threshold_id"] for r in await conn.fetch(
                        "SELECT threshold_id FROM alert_thresholds WHERE org_id = $1", org.org_id)},
                    await violations(conn))
        finally:
            await conn.close()

    top_ups, pool_total, limits, keys, threshold_rows, found = asyncio.run(database())
    wrong = []
    # Top-ups: each reference acknowledged is one row of the amount sent, and no row was never acknowledged.
    acknowledged = {}
    for body, _ in told.get("top-ups", []):
        acknowledged.setdefault(body["purchase_reference"].strip(), credits_mc(body["credits"]))
    stored = {r["purchase_reference"]: r["amount_mc"] for r in top_ups
              if r["purchase_reference"] not in initial_top_ups}
    wrong += [f"top-up {reference}: acknowledged {acknowledged.get(reference)} mc, stored {stored.get(reference)}"
              for reference in sorted(acknowledged.keys() | stored.keys())
              if acknowledged.get(reference) != stored.get(reference)]
    if pool_total != initial_total + sum(acknowledged.values()):
        wrong.append(f"pool total {pool_total}, expected {initial_total} + {sum(acknowledged.values())}")
    # Allocations: each answer is what was asked, and each member's limit is what the last answer said.
    wrong += [f"asked {body['allocation']}, told {answer['allocation_millicredits']} mc"
              for body, answer in told.get("allocations", [])
              if credits_mc(body["allocation"]) != answer["allocation_millicredits"]]
    last = {answer["user_id"]: answer["allocation_millicredits"] for _, answer in told.get("allocations", [])}
    wrong += [f"{user}: told {mc}, stored {limits.get(user)}" for user, mc in last.items() if limits.get(user) != mc]
    # Keys: created ones exist in the org, revoked ones are revoked.
    wrong += [f"key {a['key_id']} created but not stored" for _, a in told.get("create-key", [])
              if a["key_id"] not in keys]
    wrong += [f"key {a['key_id']} revoked but active" for _, a in told.get("revoke-key", [])
              if keys.get(a["key_id"]) is None]
    # Thresholds: created ones exist unless deleted; deleted ones are gone.
    deleted = {path["threshold_id"] for path, _ in told.get("delete-threshold", [])}
    created = {a["threshold_id"] for _, a in told.get("threshold", [])}
    wrong += [f"threshold {t} deleted but stored" for t in deleted & threshold_rows]
    wrong += [f"threshold {t} created, not deleted, but missing" for t in created - deleted - threshold_rows]
    print(f"top-ups acknowledged: {len(acknowledged)} ({sum(acknowledged.values())} mc), allocation changes: "
          f"{len(told.get('allocations', []))}, keys created/revoked: {len(told.get('create-key', []))}/"
          f"{len(told.get('revoke-key', []))}, thresholds created/deleted: {len(created)}/{len(deleted)}")
    assert not wrong, f"{len(wrong)} disagreements with what the owner was told, e.g. {wrong[:5]}"
    assert not found, f"invariants violated: {found}"
