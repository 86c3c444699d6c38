"""Statements (CreditAdmin.GetStatement, README "Statements and forecasts"): one account over a period, from
the ledger. After a Hypothesis-generated history of top-ups, purchases, refunds, allocation changes, holds,
commits, releases and grants, each statement reconciles with the account rows and with what the test did,
its lists add up to their totals, and a period split in two chains. Bad requests change nothing."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import grpc
import hypothesis
import pytest
from conftest import Stub, uid
from helpers import reserve_request
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from payment_events import Payments, charge_refunded, credits_for, session
from stripe_events import event

from credit.v1 import admin_pb2, admin_pb2_grpc, authority_pb2
from credit_service.reports import MAX_PERIOD_DAYS

MODELS = ("model-a", "model-b")
TOTALS = ("credits_in", "adjustments", "allocation_changes")
REFUSED = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION)


def statement(stub: Stub, start: datetime | None, end: datetime | None = None, org: str = "",
              user: str = "") -> admin_pb2.Statement:
    request = admin_pb2.GetStatementRequest(account=admin_pb2.AccountRef(org_id=org, user_id=user))
    if start is not None:
        request.start_time.FromDatetime(start)
    if end is not None:
        request.end_time.FromDatetime(end)
    return stub.GetStatement(request)


def db_clock(payments: Payments) -> datetime:
    """The database's clock, which stamps every ledger entry."""
    return payments.query("SELECT clock_timestamp()")[0][0]


def operator_name(tokens) -> str:
    """The name the operator's (mint) token has in the authority's token list."""
    [name] = [name for name, token, _ in (entry.split(":") for entry in tokens.env().split(","))
              if token == tokens.admin]
    return name


@dataclass
class Account:
    """What the test did to one account: the figures a statement over all of it must show."""

    credits_in: int = 0
    adjustments: int = 0
    allocation_changes: int = 0
    usage: int = 0
    requests: Counter = field(default_factory=Counter)  # commits by model

    @property
    def balance(self) -> int:
        return self.credits_in + self.adjustments + self.allocation_changes - self.usage


@dataclass
class History:
    """A fresh org with two members and an individual user; each operation keeps the expected figures."""

    world: object
    admin: Stub
    spend: Stub
    payments: Payments
    org: str = ""
    members: list[str] = field(default_factory=list)
    solo: str = ""
    pool: Account = field(default_factory=Account)
    allocations: dict[str, Account] = field(default_factory=dict)
    individual: Account = field(default_factory=Account)
    purchases: list[list] = field(default_factory=list)  # [session, credits, cents, refunded cents]

    def __post_init__(self) -> None:
        self.org, self.solo = self.world.org(), self.world.user()
        self.members = [self.world.user() for _ in range(2)]
        for user in self.members:
            self.world.member(self.org, user)
            self.allocations[user] = Account()

    def top_up(self, amount: int) -> None:
        self.world.top_up(self.org, amount)
        self.pool.credits_in += amount

    def buy(self, cents: int) -> None:
        paid = session(self.org, cents)
        assert self.payments.deliver(event("checkout.session.completed", paid)).outcome == "credited"
        self.purchases.append([paid, credits_for(cents), cents, 0])
        self.pool.credits_in += credits_for(cents)

    def refund(self, which: int, cumulative: int) -> None:
        if not self.purchases:
            return
        purchase = self.purchases[which % len(self.purchases)]
        paid, credits, cents, before = purchase
        self.payments.deliver(event("charge.refunded", charge_refunded(paid["payment_intent"], cents, cumulative)))
        purchase[3] = max(before, min(cumulative, cents))
        self.pool.adjustments -= credits * purchase[3] // cents - credits * before // cents

    def allocate(self, member: int, amount: int) -> None:
        user = self.members[member]
        account = self.allocations[user]
        try:
            self.world.allocate(self.org, user, amount)
        except grpc.RpcError as error:
            assert error.code() in REFUSED, error
            return
        account.allocation_changes = amount  # a statement from before the first allocation: all of it

    def use(self, account: Account, user: str, org: str, amount: int, percent: int | None, model: str) -> None:
        """A hold of `amount`; committed at `percent` of it, released (-1) or left open (None)."""
        try:
            hold = self.spend.Reserve(reserve_request(user, amount, org, service_name=model))
        except grpc.RpcError as error:
            assert error.code() in REFUSED, error
            return
        if percent is not None and percent < 0:
            self.spend.Release(authority_pb2.ReleaseRequest(reservation_id=hold.reservation_id))
        elif percent is not None:
            charged = amount * percent // 100
            self.spend.Commit(authority_pb2.CommitRequest(reservation_id=hold.reservation_id,
                                                          amount_millicredits=charged))
            for spent in (account, self.pool) if org else (account,):
                spent.usage += charged
                spent.requests[model] += 1

    def run(self, op: tuple) -> None:
        kind, *args = op
        if kind == "spend":
            member, amount, percent, model = args
            self.use(self.allocations[self.members[member]], self.members[member], self.org, amount, percent, model)
        elif kind == "solo":
            amount, percent, model = args
            self.use(self.individual, self.solo, "", amount, percent, model)
        elif kind == "grant":
            self.admin.GrantIndividualCredits(admin_pb2.GrantIndividualCreditsRequest(
                user_id=self.solo, amount_millicredits=args[0], reason="test", reference=uid("grant")))
            self.individual.credits_in += args[0]
        else:
            getattr(self, kind)(*args)

    def accounts(self) -> list[tuple[str, str, Account, int]]:
        """(org, user, expected, the account rows' balance) of the pool, each allocation, the individual."""
        org = self.admin.GetOrganization(admin_pb2.GetOrganizationRequest(org_id=self.org))
        found = [(self.org, "", self.pool, org.pool_total_millicredits - org.used_millicredits)]
        for user in self.members:
            b = self.spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=user, org_id=self.org))
            found.append((self.org, user, self.allocations[user], b.limit_millicredits - b.used_millicredits))
        b = self.spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=self.solo))
        return [*found, ("", self.solo, self.individual, b.limit_millicredits - b.used_millicredits)]


# Committed at a share of the hold (most often), released (-1) or left open (None).
PERCENT = st.one_of(st.integers(0, 100), st.integers(1, 100), st.none(), st.just(-1))
SPEND = st.tuples(st.just("spend"), st.integers(0, 1), st.integers(1, 6_000), PERCENT, st.sampled_from(MODELS))
SOLO = st.tuples(st.just("solo"), st.integers(1, 6_000), PERCENT, st.sampled_from(MODELS))
OPERATIONS = st.one_of(
    st.tuples(st.just("top_up"), st.integers(1, 60_000)),
    st.tuples(st.just("buy"), st.integers(1, 400)),
    st.tuples(st.just("refund"), st.integers(0, 9), st.integers(1, 450)),
    st.tuples(st.just("allocate"), st.integers(0, 1), st.integers(0, 40_000)),
    st.tuples(st.just("grant"), st.integers(1, 20_000)),
    SPEND, SPEND, SPEND, SOLO, SOLO,
)


def assert_adds_up(s: admin_pb2.Statement, pool: bool) -> None:
    """closing − opening is what the statement lists; each list sums to its total; usage splits exactly."""
    assert s.closing_balance_millicredits - s.opening_balance_millicredits == (
        s.credits_in_millicredits + s.adjustments_millicredits + s.allocation_changes_millicredits
        - s.usage_millicredits)
    for name in TOTALS:
        lines = getattr(s, name)
        assert sum(x.amount_millicredits for x in lines) == getattr(s, f"{name}_millicredits"), name
        assert all(s.start_time.ToDatetime() <= x.at.ToDatetime() < s.end_time.ToDatetime() for x in lines)
    assert sum(u.credits_used_millicredits for u in s.usage_by_model) == s.usage_millicredits
    if pool:
        assert sum(u.credits_used_millicredits for u in s.usage_by_member) == s.usage_millicredits
    else:
        assert list(s.usage_by_member) == []
    assert all(x.kind == "refund" and x.amount_millicredits < 0 for x in s.adjustments)


def assert_chains(full: admin_pb2.Statement, first: admin_pb2.Statement, second: admin_pb2.Statement) -> None:
    """[start, mid) then [mid, end): the first closes where the second opens, and the parts add to the whole."""
    assert first.opening_balance_millicredits == full.opening_balance_millicredits
    assert first.closing_balance_millicredits == second.opening_balance_millicredits
    assert second.closing_balance_millicredits == full.closing_balance_millicredits
    for name in (*TOTALS, "usage"):
        total = f"{name}_millicredits"
        assert getattr(first, total) + getattr(second, total) == getattr(full, total), name
    for name in TOTALS:
        assert [*getattr(first, name), *getattr(second, name)] == list(getattr(full, name)), name
    for group in ("usage_by_model", "usage_by_member"):
        parts = Counter({u.key: u.credits_used_millicredits for u in getattr(first, group)})
        parts.update({u.key: u.credits_used_millicredits for u in getattr(second, group)})
        assert +parts == +Counter({u.key: u.credits_used_millicredits for u in getattr(full, group)}), group


# Every history starts by funding the pool, both allocations (shares of it) and the individual balance, so
# that spending gets somewhere; the operations that follow may still do anything in any order.
FUNDING = st.tuples(st.integers(10_000, 100_000), st.integers(1, 50), st.integers(1, 50),
                    st.integers(1, 30_000)).map(lambda f: [
                        ("top_up", f[0]), ("allocate", 0, f[0] * f[1] // 100), ("allocate", 1, f[0] * f[2] // 100),
                        ("grant", f[3])])


@given(funding=FUNDING, operations=st.lists(OPERATIONS, min_size=4, max_size=12), split=st.integers(0, 15))
@example(funding=[("top_up", 50_000), ("allocate", 0, 20_000), ("allocate", 1, 10_000), ("grant", 9_000)],
         operations=[("buy", 300), ("spend", 0, 5_000, 60, "model-a"), ("spend", 1, 4_000, None, "model-b"),
                     ("solo", 3_000, 100, "model-b"), ("allocate", 0, 25_000), ("refund", 0, 120),
                     ("spend", 0, 2_000, -1, "model-a"), ("spend", 1, 3_000, 33, "model-a"),
                     ("refund", 0, 300), ("allocate", 1, 5_000), ("solo", 2_000, 0, "model-a")], split=6)
@settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_statements_of_any_history_reconcile_with_the_accounts_and_chain(payments, world, admin, spend,
                                                                       funding, operations, split):
    start = db_clock(payments)
    history = History(world, admin, spend, payments)
    mid = None
    for i, op in enumerate(funding + operations):
        if i == split:
            mid = db_clock(payments)
        history.run(op)
    mid = mid or db_clock(payments)
    for org, user, expected, balance in history.accounts():
        full = statement(admin, start, org=org, user=user)
        pool = not user
        assert (full.opening_balance_millicredits, full.closing_balance_millicredits) == (0, balance)
        assert balance == expected.balance
        assert (full.credits_in_millicredits, full.adjustments_millicredits, full.allocation_changes_millicredits,
                full.usage_millicredits) == (expected.credits_in, expected.adjustments,
                                             expected.allocation_changes, expected.usage)
        assert Counter({u.key: u.requests for u in full.usage_by_model}) == +expected.requests
        assert_adds_up(full, pool)
        end = full.end_time.ToDatetime(timezone.utc)
        first = statement(admin, start, mid, org=org, user=user)
        second = statement(admin, mid, end, org=org, user=user)
        for part in (first, second):
            assert_adds_up(part, pool)
        assert_chains(full, first, second)
        assert statement(admin, mid, org=org, user=user).closing_balance_millicredits == balance
    assert not payments.violations()
    hypothesis.event(f"pool usage: {'some' if history.pool.usage else 'none'}, refunds: "
                     f"{'some' if history.pool.adjustments else 'none'}, individual usage: "
                     f"{'some' if history.individual.usage else 'none'}")


def test_each_line_names_its_source(payments, world, admin, spend, tokens):
    operator = operator_name(tokens)
    start = db_clock(payments)
    org, user = world.org(), world.user()
    world.member(org, user)
    reference = uid("po")
    admin.TopUpPool(admin_pb2.TopUpPoolRequest(org_id=org, amount_millicredits=credits_for(1_000),
                                               purchase_reference=reference))
    paid = session(org, 1_000)
    payments.deliver(event("checkout.session.completed", paid))
    refunded = payments.deliver(event("charge.refunded", charge_refunded(paid["payment_intent"], 1_000, 400)))
    world.allocate(org, user, credits_for(500))
    hold = spend.Reserve(reserve_request(user, credits_for(100), org))  # held, never committed: not usage

    s = statement(admin, start, org=org)
    assert [(x.kind, x.amount_millicredits, x.source, x.reference) for x in s.credits_in] == [
        ("top_up", credits_for(1_000), f"operator {operator}", reference),
        ("purchase", credits_for(1_000), f"payment {paid['id']}", f"stripe:{paid['id']}")]
    [back] = s.adjustments
    assert (back.kind, back.amount_millicredits) == ("refund", -refunded.purchase.refunded_millicredits)
    assert back.amount_millicredits < 0 and paid["payment_intent"] in back.note
    assert (s.usage_millicredits, list(s.allocation_changes)) == (0, [])  # allocating moves no pool credits
    [change] = statement(admin, start, org=org, user=user).allocation_changes
    assert (change.kind, change.amount_millicredits, change.source) == ("allocation", credits_for(500), operator)
    spend.Release(authority_pb2.ReleaseRequest(reservation_id=hold.reservation_id))

    solo, grant = world.user(), uid("ticket")
    admin.GrantIndividualCredits(admin_pb2.GrantIndividualCreditsRequest(
        user_id=solo, amount_millicredits=credits_for(300), reason="goodwill", reference=grant))
    [line] = statement(admin, start, user=solo).credits_in
    assert (line.kind, line.amount_millicredits, line.source, line.reference) == (
        "grant", credits_for(300), f"operator {operator}", grant)
    assert "goodwill" in line.note


def test_bad_statement_requests_are_refused_and_change_nothing(payments, world, admin):
    org, member, outsider = world.org(), world.user(), world.user()
    world.member(org, member)
    now = db_clock(payments)
    day = timedelta(days=1)
    before = payments.counts()
    refused = {
        grpc.StatusCode.INVALID_ARGUMENT: [
            dict(start=now - day),  # no account
            dict(start=now, end=now - day, org=org),  # start after end
            dict(start=now - day, end=now - day, org=org),  # empty period
            dict(start=now - (MAX_PERIOD_DAYS + 1) * day, end=now, org=org),  # longer than allowed
            dict(start=now - (MAX_PERIOD_DAYS + 1) * day, org=org),  # ... up to now
            dict(start=None, org=org),  # start unset
            dict(start=now - day, org="bad id with spaces"),
        ],
        grpc.StatusCode.NOT_FOUND: [
            dict(start=now - day, org=f"no-such-{uuid.uuid4().hex[:6]}"),
            dict(start=now - day, user=f"no-such-{uuid.uuid4().hex[:6]}"),
            dict(start=now - day, org=org, user=outsider),  # not a member: no allocation
        ],
    }
    for code, requests in refused.items():
        for request in requests:
            with pytest.raises(grpc.RpcError) as raised:
                statement(admin, **request)
            assert raised.value.code() == code, request
    longest = statement(admin, now - MAX_PERIOD_DAYS * day, now, org=org)  # the longest period is allowed
    assert (longest.opening_balance_millicredits, longest.closing_balance_millicredits) == (0, 0)
    assert statement(admin, now - day, org=org, user=member).usage_millicredits == 0
    assert payments.counts() == before
    assert not payments.violations()


def test_statements_need_the_admin_or_read_role(payments, world, channel, tokens):
    org = world.org()
    world.top_up(org, credits_for(100))
    start = db_clock(payments) - timedelta(hours=1)
    reader = Stub(admin_pb2_grpc.CreditAdminStub(channel), tokens.read)
    assert statement(reader, start, org=org).closing_balance_millicredits == credits_for(100)
    spender = Stub(admin_pb2_grpc.CreditAdminStub(channel), tokens.other_spend)  # spend only
    with pytest.raises(grpc.RpcError) as raised:
        statement(spender, start, org=org)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
