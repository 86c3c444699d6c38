"""Random sequences of top-ups, allocations, grants, reserves, commits, releases
and expiries; after every step the authority agrees with a simple model and
every invariant of docs/contract.md holds in the database."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import grpc
from helpers import reserve_request
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule, run_state_machine_as_test
from invariants import violations

from credit.v1 import admin_pb2, authority_pb2

AMOUNTS = st.integers(min_value=1, max_value=20_000)


def _build_machine(world, spend, admin, database_url):
    class CreditMachine(RuleBasedStateMachine):
        holds = Bundle("holds")
        expired = Bundle("expired")

        def __init__(self):
            super().__init__()
            self.loop = asyncio.new_event_loop()
            self.conn = self.loop.run_until_complete(asyncpg.connect(database_url))
            self.org = world.org()
            self.members = [world.user() for _ in range(2)]
            for user in self.members:
                world.member(self.org, user)
            self.solo = world.user()
            self.pool_total = 0
            # account key → [limit, used, held]
            self.accounts = {user: [0, 0, 0] for user in [*self.members, self.solo]}
            # Start funded so that most steps move money; rules add and reshape from there.
            self.top_up(100_000)
            for member in (0, 1):
                self.set_allocation(member, 40_000)
            self.grant(40_000)

        def teardown(self):
            self.loop.run_until_complete(self.conn.close())
            self.loop.close()

        def _org_for(self, user):
            return self.org if user in self.members else ""

        def _available(self, user):
            limit, used, held = self.accounts[user]
            return limit - used - held

        @rule(amount=AMOUNTS)
        def top_up(self, amount):
            world.top_up(self.org, amount)
            self.pool_total += amount

        @rule(member=st.integers(0, 1), amount=st.integers(0, 120_000))
        def set_allocation(self, member, amount):
            user = self.members[member]
            limit, used, held = self.accounts[user]
            allocated = sum(self.accounts[m][0] for m in self.members)
            expected_ok = amount >= used + held and amount - limit <= self.pool_total - allocated
            try:
                world.allocate(self.org, user, amount)
                assert expected_ok, "allocation accepted that the model refuses"
                self.accounts[user][0] = amount
            except grpc.RpcError as error:
                assert not expected_ok, f"allocation refused: {error.details()}"
                assert error.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION)

        @rule(amount=AMOUNTS)
        def grant(self, amount):
            admin.GrantIndividualCredits(admin_pb2.GrantIndividualCreditsRequest(
                user_id=self.solo, amount_millicredits=amount, reference=uuid.uuid4().hex))
            self.accounts[self.solo][0] += amount

        @rule(target=holds, who=st.integers(0, 2), amount=AMOUNTS)
        def reserve(self, who, amount):
            user = [*self.members, self.solo][who]
            expected_ok = self._available(user) >= amount
            try:
                hold = spend.Reserve(reserve_request(user, amount, self._org_for(user)))
            except grpc.RpcError as error:
                assert not expected_ok and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
                return None
            assert expected_ok, "reserve granted beyond the available credits"
            self.accounts[user][2] += amount
            assert hold.available_millicredits == self._available(user)
            return (hold.reservation_id, user, amount)

        @rule(hold=consumes(holds), fraction=st.sampled_from([0, 0.5, 1, 1.5]))
        def commit(self, hold, fraction):
            if hold is None:
                return
            reservation_id, user, amount = hold
            actual = int(amount * fraction)
            result = spend.Commit(authority_pb2.CommitRequest(reservation_id=reservation_id,
                                                              amount_millicredits=actual))
            self.accounts[user][1] += actual
            self.accounts[user][2] -= amount
            assert result.charged_millicredits == actual
            assert result.available_millicredits == self._available(user)
            again = spend.Commit(authority_pb2.CommitRequest(reservation_id=reservation_id,
                                                             amount_millicredits=actual))
            assert again.charged_millicredits == actual

        @rule(hold=consumes(holds))
        def release(self, hold):
            if hold is None:
                return
            reservation_id, user, amount = hold
            spend.Release(authority_pb2.ReleaseRequest(reservation_id=reservation_id, reason="test"))
            self.accounts[user][2] -= amount

        @rule(target=expired, hold=consumes(holds))
        def expire(self, hold):
            if hold is None:
                return None
            reservation_id, user, amount = hold
            self.loop.run_until_complete(self.conn.execute(
                "UPDATE reservations SET expires_at = now() - interval '1 second' WHERE reservation_id = $1::uuid",
                reservation_id))
            # The authority's own sweeper may take this hold first (SKIP LOCKED makes our pass skip
            # it then); either way it must end up expired, within a few sweeps.
            deadline = time.monotonic() + 5
            while True:
                self.loop.run_until_complete(self.conn.fetchval("SELECT credit_expire_holds(1000)"))
                status = self.loop.run_until_complete(self.conn.fetchval(
                    "SELECT status FROM reservations WHERE reservation_id = $1::uuid", reservation_id))
                if status != "held" or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert status == "expired"
            self.accounts[user][2] -= amount
            return hold

        @rule(hold=consumes(expired), actual=st.integers(0, 60_000))
        def late_commit(self, hold, actual):
            if hold is None:
                return
            reservation_id, user, _ = hold
            result = spend.Commit(authority_pb2.CommitRequest(reservation_id=reservation_id,
                                                              amount_millicredits=actual))
            assert result.late and result.charged_millicredits == actual
            self.accounts[user][1] += actual

        @invariant()
        def balances_match_the_model(self):
            for user, (limit, used, held) in self.accounts.items():
                balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=user,
                                                                           org_id=self._org_for(user)))
                assert (balance.limit_millicredits, balance.used_millicredits, balance.held_millicredits) == \
                    (limit, used, held), user
            org = admin.GetOrganization(admin_pb2.GetOrganizationRequest(org_id=self.org))
            assert org.pool_total_millicredits == self.pool_total
            assert org.allocated_millicredits == sum(self.accounts[m][0] for m in self.members)

        @invariant()
        def database_invariants_hold(self):
            found = self.loop.run_until_complete(violations(self.conn))
            assert not found, found

    return CreditMachine


def test_random_operation_sequences_keep_every_invariant(world, spend, admin, database_url):
    machine = _build_machine(world, spend, admin, database_url)
    run_state_machine_as_test(machine, settings=settings(
        max_examples=40, stateful_step_count=40, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))


