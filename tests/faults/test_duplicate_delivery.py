"""Every mutating RPC delivered 4 times (the original and 3 replays, at random
points of a sequence): money moves once, every replay answers what the first
delivery answered, and the ledger holds one entry per movement."""

from __future__ import annotations

import random
import uuid
from collections import Counter

import grpc
from invariants import assert_invariants

from credit.v1 import admin_pb2, authority_pb2

from .conftest import report

CREATES = {"CreateUser", "CreateOrganization", "AddMember"}  # a replay of a create may say ALREADY_EXISTS


async def test_replayed_mutations_charge_and_credit_once(spend, admin, db):
    rng = random.Random(20261124)
    user, other, org = (f"dup-{name}-{uuid.uuid4().hex[:6]}" for name in ("user", "solo", "org"))
    steps = [
        ("CreateUser", admin.CreateUser, admin_pb2.CreateUserRequest(user_id=user)),
        ("CreateUser", admin.CreateUser, admin_pb2.CreateUserRequest(user_id=other)),
        ("CreateOrganization", admin.CreateOrganization, admin_pb2.CreateOrganizationRequest(org_id=org)),
        ("AddMember", admin.AddMember, admin_pb2.AddMemberRequest(org_id=org, user_id=user, is_default=True)),
        ("TopUpPool", admin.TopUpPool, admin_pb2.TopUpPoolRequest(org_id=org, amount_millicredits=50_000,
                                                                  purchase_reference="po-1")),
        ("SetAllocation", admin.SetAllocation, admin_pb2.SetAllocationRequest(org_id=org, user_id=user,
                                                                              allocation_millicredits=30_000)),
        ("GrantIndividualCredits", admin.GrantIndividualCredits, admin_pb2.GrantIndividualCreditsRequest(
            user_id=other, amount_millicredits=9_000, reference="grant-1")),
    ]
    for i in range(6):
        steps.append(("Reserve", spend.Reserve, authority_pb2.ReserveRequest(
            request_id=f"{user}-r{i}", user_id=user, amount_millicredits=2_000, service_type="llm_inference")))
        steps.append(("Reserve", spend.Reserve, authority_pb2.ReserveRequest(
            request_id=f"{other}-r{i}", user_id=other, amount_millicredits=1_000, service_type="llm_inference")))

    answers: Counter = Counter()  # (RPC, code) of every delivery
    first: dict[bytes, str] = {}  # a money RPC's request → what its first answer said
    divergent: list[str] = []  # replays answered otherwise than the first delivery

    def essence(response) -> str:
        """What a replay must repeat (available balances move on between deliveries)."""
        if isinstance(response, authority_pb2.ReserveResponse):
            return f"{response.reservation_id} {response.reserved_millicredits}"
        if isinstance(response, authority_pb2.CommitResponse):
            return str(response.charged_millicredits)
        return ""

    def deliver(name, call, request):
        try:
            response = call(request)
        except grpc.RpcError as error:  # a replay of a create says ALREADY_EXISTS; that is fine
            answers[name, error.code().name] += 1
            return None
        answers[name, "OK"] += 1
        said = essence(response)
        key = name.encode() + request.SerializeToString(deterministic=True)
        if first.setdefault(key, said) != said:
            divergent.append(f"{name}: first {first[key]!r}, then {said!r}")
        return response

    # Deliver each step once in order, and replay every earlier step 3 times at random later points.
    replays: list[tuple] = []
    results = {}
    for index, step in enumerate(steps):
        results[index] = deliver(*step)
        replays += [step] * 3
        rng.shuffle(replays)
        for _ in range(rng.randint(0, 3)):
            if replays:
                deliver(*replays.pop())
    for step in replays:
        deliver(*step)

    holds = [r for r in results.values() if isinstance(r, authority_pb2.ReserveResponse)]
    finals = []
    for n, hold in enumerate(holds):
        if n % 3 == 2:
            request = authority_pb2.ReleaseRequest(reservation_id=hold.reservation_id, reason="dup test")
            finals.append(("Release", spend.Release, request))
        else:
            finals.append(("Commit", spend.Commit, authority_pb2.CommitRequest(
                reservation_id=hold.reservation_id, amount_millicredits=500 + n)))
    deliveries = [f for f in finals for _ in range(4)]
    rng.shuffle(deliveries)
    for step in deliveries:
        deliver(*step)

    planned = Counter(name for name, _, _ in steps + finals)
    charged = {user: 0, other: 0}
    for n, hold in enumerate(holds):
        if n % 3 != 2:
            owner = user if hold.funding.kind == hold.funding.ORG else other
            charged[owner] += 500 + n
    org_view = admin.GetOrganization(admin_pb2.GetOrganizationRequest(org_id=org))
    balances = {who: spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=who)) for who in (user, other)}
    statuses = dict(await db.fetch("SELECT status, count(*) FROM reservations WHERE user_id IN ($1, $2) "
                                   "GROUP BY 1", user, other))
    rows = await db.fetchval("SELECT count(*) FROM usage_attribution WHERE user_id IN ($1, $2)", user, other)
    # Every money movement as ledger entries, grouped by what it moved: each group must hold one entry.
    moves = await db.fetch("""SELECT kind, coalesce(reservation_id::text, '') AS rid, count(*) AS n
                                FROM ledger_entries WHERE org_id = $1 OR user_id IN ($2, $3)
                               GROUP BY kind, account, org_id, user_id, reservation_id""", org, user, other)
    moved = Counter(m["kind"] for m in moves)
    moved_twice = [f"{m['kind']} {m['rid']} x{m['n']}" for m in moves if m["n"] > 1]
    refused = {f"{name} {code}": n for (name, code), n in answers.items()
               if code != "OK" and not (code == "ALREADY_EXISTS" and name in CREATES)}

    assert not refused, f"money RPCs must answer a replay with the first result: {refused}"
    assert not divergent, divergent
    assert not moved_twice, f"money moved more than once: {moved_twice}"
    assert statuses == {"committed": planned["Commit"], "released": planned["Release"]}, statuses
    assert rows == planned["Commit"]
    assert dict(moved) == {"top_up": planned["TopUpPool"], "allocation": planned["SetAllocation"],
                           "grant": planned["GrantIndividualCredits"], "hold": planned["Reserve"],
                           "charge": planned["Commit"], "release": planned["Release"]}, moved
    assert (org_view.pool_total_millicredits, org_view.allocated_millicredits) == (50_000, 30_000)
    for who, limit in ((user, 30_000), (other, 9_000)):
        b = balances[who]
        assert (b.limit_millicredits, b.used_millicredits, b.held_millicredits) == (limit, charged[who], 0), who
    await assert_invariants(db)
    report("duplicate delivery (each mutating RPC 4x)", deliveries=sum(answers.values()),
           answers={f"{name} {code}": n for (name, code), n in sorted(answers.items())},
           reservations=sum(statuses.values()), commits=statuses.get("committed", 0),
           releases=statuses.get("released", 0), attribution_rows=rows,
           ledger_entries=dict(sorted(moved.items())), moved_twice=len(moved_twice),
           replays_answered_differently=len(divergent), charged_mc=sum(b.used_millicredits for b in balances.values()))
