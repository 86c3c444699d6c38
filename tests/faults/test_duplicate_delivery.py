"""Every mutating RPC delivered 4 times (the original and 3 replays, at random
points of a sequence): money moves once."""

from __future__ import annotations

import random
import uuid

import grpc
from invariants import assert_invariants

from credit.v1 import admin_pb2, authority_pb2

from .conftest import report


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

    def deliver(name, call, request):
        try:
            return call(request)
        except grpc.RpcError as error:  # a replay of a create says ALREADY_EXISTS; that is fine
            assert error.code() == grpc.StatusCode.ALREADY_EXISTS, (name, error.code(), error.details())
            return None

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

    charged = {user: 0, other: 0}
    for n, hold in enumerate(holds):
        if n % 3 != 2:
            owner = user if hold.funding.kind == hold.funding.ORG else other
            charged[owner] += 500 + n
    org_view = admin.GetOrganization(admin_pb2.GetOrganizationRequest(org_id=org))
    assert (org_view.pool_total_millicredits, org_view.allocated_millicredits) == (50_000, 30_000)
    for who, limit in ((user, 30_000), (other, 9_000)):
        balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=who))
        assert (balance.limit_millicredits, balance.used_millicredits, balance.held_millicredits) == \
            (limit, charged[who], 0), who
    assert await db.fetchval("SELECT count(*) FROM reservations WHERE user_id IN ($1, $2)", user, other) == 12
    assert await db.fetchval("SELECT count(*) FROM usage_attribution WHERE user_id IN ($1, $2)", user, other) == 8
    assert await db.fetchval("SELECT count(*) FROM pool_top_ups WHERE org_id = $1", org) == 1
    await assert_invariants(db)
    report("duplicate delivery (each mutating RPC 4x)", deliveries=len(steps) * 4 + len(deliveries),
           reservations=12, commits=8, releases=4, charged_once=True)
