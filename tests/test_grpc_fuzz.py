"""Hypothesis-generated requests for every RPC, built from the proto descriptors.

Most requests start valid and name rows this test created (users, orgs, members, reservations,
keys, thresholds) and have one field mutated, so the hot path answers OK, not only
INVALID_ARGUMENT; the rest are random messages whose ids are real ones mixed with made-up ones.
Never UNKNOWN or INTERNAL; a rejected request writes no row; and after the run the client's view
and the database agree both ways (every Commit acknowledged is the one charge of its reservation,
every reservation charged was acknowledged, every Release acknowledged left nothing charged) and the
invariants hold."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
import pytest
from conftest import AuthorityProcess, Stub, World
from google.protobuf import descriptor, struct_pb2, timestamp_pb2
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from invariants import row_counts, violations

from credit.v1 import admin_pb2, admin_pb2_grpc, authority_pb2, authority_pb2_grpc
from credit_service.migrate import migrate

FD = descriptor.FieldDescriptor
INT64 = (-(2**63), 2**63 - 1)
INT32 = (-(2**31), 2**31 - 1)
HOT_PATH = ("Check", "Reserve", "Commit", "Release", "GetBalance")

TEXT = st.one_of(
    st.sampled_from(["", "demo-user", "demo-org", "x'; DROP TABLE users; --", "ck_0123456789abcdef",
                     "00000000-0000-0000-0000-000000000000", "\x00", "ü" * 10, " ", "a" * 300]),
    st.text(max_size=40),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,20}", fullmatch=True),
)


def integers(bounds):
    low, high = bounds
    edges = [v for v in (0, 1, -1, low, high, 10**15, 10**15 + 1) if low <= v <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


JSON_LEAF = st.one_of(st.none(), st.booleans(), st.text(max_size=20),
                      st.floats(allow_nan=True, allow_infinity=True))
STRUCT = st.dictionaries(st.text(max_size=10), st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=3),
                                                            max_leaves=5), max_size=4)


def rpcs(service_descriptor, module):
    found = []
    for method in service_descriptor.methods:
        request_cls = getattr(module, method.input_type.name, None) or getattr(
            authority_pb2 if module is admin_pb2 else admin_pb2, method.input_type.name)
        found.append((method.name, request_cls))
    return found


AUTHORITY_RPCS = rpcs(authority_pb2.DESCRIPTOR.services_by_name["CreditAuthority"], authority_pb2)
ADMIN_RPCS = rpcs(admin_pb2.DESCRIPTOR.services_by_name["CreditAdmin"], admin_pb2)
# How often each hot-path RPC is drawn, relative to each admin RPC (Reserve and Commit most: a Commit needs a
# hold to finalize, and a Release takes one away). With 31 admin RPCs, GetBalance at 2 was once drawn only 8
# times in 1,000 calls, none of them valid: the hot path keeps about 40 % of the draws.
# The REST services' callers (tests/conftest.py Tokens.service, tests/console ConsoleTokens.console): services
# earlier tests left running may still settle their own calls while this test runs; the fuzz never acts on theirs.
REST_CALLERS = ("rest", "console")
HOT_PATH_WEIGHTS = {"Check": 4, "Reserve": 10, "Commit": 8, "Release": 6, "GetBalance": 4}
CALLS = [("authority", name, cls) for name, cls in AUTHORITY_RPCS for _ in range(HOT_PATH_WEIGHTS[name])] + \
        [("admin", name, cls) for name, cls in ADMIN_RPCS]


@dataclass
class Rows:
    """Rows this test created, and what the fuzz learned from OK answers (ids to name in later requests)."""

    users: list[str]
    orgs: list[str]
    funded: list[tuple[str, str]]  # (user, org) that can pay: members with an allocation; ("individual", "")
    memberships: list[tuple[str, str]]  # (user, org) of every member
    held: dict[str, int] = field(default_factory=dict)  # reservations reserved OK and not finalized by us
    finalized: list[str] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)  # key id -> secret
    thresholds: list[int] = field(default_factory=list)

    def reservation_ids(self) -> list[str]:
        return list(self.held) + self.finalized


def fuzz_value(field_descriptor) -> st.SearchStrategy[Any]:
    """Any value of the field's wire type (a list of them for a repeated field: org_ids, roles)."""
    if field_descriptor.is_repeated and field_descriptor.type == FD.TYPE_STRING:
        return st.lists(TEXT, max_size=4)
    if field_descriptor.type == FD.TYPE_STRING:
        return TEXT
    if field_descriptor.type == FD.TYPE_BYTES:
        return st.one_of(st.binary(max_size=200), TEXT.map(lambda text: text.encode(errors="surrogatepass")))
    if field_descriptor.type in (FD.TYPE_INT64, FD.TYPE_SINT64):
        return integers(INT64)
    if field_descriptor.type == FD.TYPE_INT32:
        return integers(INT32)
    if field_descriptor.type == FD.TYPE_ENUM:
        return st.integers(-3, 8)
    if field_descriptor.type == FD.TYPE_BOOL:
        return st.booleans()
    if field_descriptor.message_type is struct_pb2.Struct.DESCRIPTOR:
        return STRUCT
    if field_descriptor.message_type is timestamp_pb2.Timestamp.DESCRIPTOR:
        return st.builds(timestamp_pb2.Timestamp, seconds=st.integers(0, 4_000_000_000))
    return nested_message(field_descriptor.message_type)


@st.composite
def nested_message(draw, descriptor):
    """A message field of our own (AccountRef): each of its fields set to anything of its type, or not."""
    message = getattr(admin_pb2, descriptor.name)()
    for f in descriptor.fields:
        if draw(st.booleans()):
            set_field(message, f, draw(fuzz_value(f)))
    return message


# Hypothesis replays and shrinks by the sequence of choices it made, so what a test draws must not depend on
# state outside it (the rows learned so far): ids are drawn as an index into the rows of the moment.
INDEX = st.integers(0, 2**20)


def pick(draw, pool: list[Any], default: Any) -> Any:
    index = draw(INDEX)
    return pool[index % len(pool)] if pool else default


def valid_values(rpc: str, rows: Rows, draw) -> dict[str, Any]:
    """Values the authority should accept, naming rows the test created (callables: drawn only when used)."""
    funded, membership = pick(draw, rows.funded, None), pick(draw, rows.memberships, None)
    user, org = funded if rpc in HOT_PATH else membership  # admin RPCs name an org
    fresh = uuid.uuid4().hex
    # Mostly a held reservation (when there is one), else one already finalized (a replay, a Release after a
    # Commit: answers the contract fixes too), else an id no row has.
    held, finalized = pick(draw, sorted(rows.held), None), pick(draw, rows.finalized, str(uuid.uuid4()))
    reservation = held if draw(st.integers(0, 3)) < 3 and held else finalized
    hold = rows.held.get(reservation, 10_000)
    return {
        "user_id": f"fz-user-{fresh[:12]}" if rpc == "CreateUser" else user,
        "org_id": f"fz-org-{fresh[:12]}" if rpc == "CreateOrganization" else org,
        # A Commit charges 0 … twice its hold (above the hold is an overrun, still charged).
        "amount_millicredits": lambda: hold * draw(st.integers(0, 200)) // 100 if rpc == "Commit"
        else draw(st.integers(1, 20_000)),
        "allocation_millicredits": lambda: draw(st.integers(0, 400_000)),
        "ttl_seconds": lambda: draw(st.sampled_from([0, 60, 600])),
        "request_id": fresh, "reference": fresh, "purchase_reference": fresh, "reservation_id": reservation,
        "key_id": lambda: pick(draw, sorted(rows.keys), "ck_0123456789abcdef"),
        "secret": lambda: pick(draw, sorted(rows.keys.values()), "nope") if rpc == "VerifyApiKey" else "s" * 24,
        "threshold_id": lambda: pick(draw, rows.thresholds, 1),
        "url": "http://127.0.0.1:9/hooks/fuzz", "service_type": "llm_inference", "service_name": "fuzz-model",
        "reason": "fuzz", "name": (lambda: f"fuzz-{uuid.uuid4().hex[:8]}") if "Platform" in rpc else "Fuzz",
        "org_ids": lambda: [org], "roles": lambda: draw(st.sampled_from([["spend"], ["read"], ["spend", "read"]])),
        "display_name": "Fuzz", "email": "fuzz@example.com",
        "allocated_by": "fuzz", "purchase_amount": "1.00", "purchase_currency": "USD", "limit": 20,
        "role": admin_pb2.MEMBER_ROLE_MEMBER, "kind": 1, "value": 5_000, "metadata": {"source": "fuzz", "n": 1},
        "account": lambda: admin_pb2.AccountRef(org_id=org, user_id=user if draw(st.booleans()) else ""),
        "start_time": timestamp_pb2.Timestamp(seconds=int(time.time()) - 30 * 86_400),
        "window_days": lambda: draw(st.sampled_from([0, 7, 30])),
    }


def set_field(message, field_descriptor, value) -> None:
    target = getattr(message, field_descriptor.name)
    if isinstance(target, struct_pb2.Struct):
        try:
            target.update(value)
        except (ValueError, TypeError):
            pass
    elif isinstance(target, Message):  # a Timestamp, an AccountRef
        target.CopyFrom(value)
    elif field_descriptor.is_repeated:
        del target[:]
        target.extend(value)
    else:
        setattr(message, field_descriptor.name, value)


def real_or_fuzz(draw, name: str, rows: Rows, strategy: st.SearchStrategy[Any]) -> Any:
    """For id fields, often one of the rows' real ids; otherwise anything of the field's type."""
    real = {"user_id": rows.users, "org_id": rows.orgs, "reservation_id": rows.reservation_ids(),
            "request_id": rows.request_ids, "key_id": list(rows.keys), "secret": list(rows.keys.values()),
            "threshold_id": rows.thresholds}.get(name) or []
    use_real, value = draw(st.booleans()), draw(strategy)
    return pick(draw, real, value) if use_real else value


@st.composite
def request_for(draw, rpc: str, request_cls, rows: Rows):
    """A valid request (3 in 10), one with one field mutated (5 in 10), or a random message naming real ids.
    (Hypothesis favours the simplest choice, 0: here, the valid request.)"""
    message = request_cls()
    fields = list(request_cls.DESCRIPTOR.fields)
    mode = draw(st.integers(0, 9))
    if mode >= 8:
        for f in fields:
            if draw(st.booleans()):
                set_field(message, f, real_or_fuzz(draw, f.name, rows, fuzz_value(f)))
        note(f"random {rpc}")
        return message
    valid = valid_values(rpc, rows, draw)
    for f in fields:
        if f.name in valid:
            value = valid[f.name]
            set_field(message, f, value() if callable(value) else value)
    if mode < 3 or not fields:  # (a request without fields, ListPlatformCredentials's, is always valid)
        note(f"valid {rpc}")
        return message
    mutated = draw(st.sampled_from(fields))
    message.ClearField(mutated.name)
    if draw(st.integers(0, 4)):
        set_field(message, mutated, real_or_fuzz(draw, mutated.name, rows, fuzz_value(mutated)))
    note(f"{rpc}: {mutated.name} mutated")
    return message


def test_every_rpc_is_covered():
    assert {n for n, _ in AUTHORITY_RPCS} == set(HOT_PATH)
    assert len(ADMIN_RPCS) >= 14


def make_rows(world: World) -> Rows:
    orgs = [world.org(2_000_000) for _ in range(3)]
    users = [world.user() for _ in range(6)]
    funded = []
    for i, user in enumerate(users[:4]):
        org = orgs[i % 2]
        world.member(org, user, 300_000, default=i == 0)
        funded += [(user, org), (user, "")]  # "" resolves to the user's default (or first) org
    world.member(orgs[2], users[0], 200_000)  # a second org for one user
    funded.append((users[0], orgs[2]))
    solo = world.user(individual_mc=500_000)
    funded.append((solo, ""))
    memberships = [p for p in funded if p[1]] + [(users[4], orgs[2])]
    world.member(orgs[2], users[4])  # a member without an allocation
    return Rows(users=users + [solo], orgs=orgs, funded=funded, memberships=memberships)


def test_generated_requests_reach_the_hot_path_never_fail_unknown_or_internal_and_rejections_write_nothing(
        channel, tokens, database_url, world):
    stubs = {"authority": Stub(authority_pb2_grpc.CreditAuthorityStub(channel), tokens.spend),
             "admin": Stub(admin_pb2_grpc.CreditAdminStub(channel), tokens.admin)}
    rows = make_rows(world)
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(asyncpg.connect(database_url))
    seen: Counter[tuple[str, str]] = Counter()
    reserved: set[str] = set()  # every reservation id a Reserve answered OK
    acknowledged: dict[str, int] = {}  # reservation id -> charge a Commit answered OK
    released: set[str] = set()
    reserve_request_ids: list[str] = []

    def learn(name: str, request, response) -> None:
        """Keeps what an OK answer created, so later requests can name it."""
        if name == "Reserve":
            rid = response.reservation_id
            reserved.add(rid)
            rows.request_ids.append(request.request_id)
            if rid not in acknowledged and rid not in released:
                rows.held[rid] = response.reserved_millicredits
        elif name == "Commit":
            rid = request.reservation_id
            assert acknowledged.setdefault(rid, response.charged_millicredits) == response.charged_millicredits, \
                f"Commit of {rid} acknowledged twice with different charges"
            rows.held.pop(rid, None)
            rows.finalized.append(rid)
        elif name == "Release":
            released.add(request.reservation_id)
            rows.held.pop(request.reservation_id, None)
            rows.finalized.append(request.reservation_id)
        elif name == "CreateUser":
            rows.users.append(response.user_id)
        elif name == "CreateOrganization":
            rows.orgs.append(response.org_id)
        elif name == "CreateApiKey":
            rows.keys[response.key.key_id] = response.secret
        elif name == "CreateAlertThreshold":
            rows.thresholds.append(response.threshold.threshold_id)
        elif name == "RemoveMember":
            # (the individual's pair stays: no RemoveMember can take it away)
            rows.funded = [p for p in rows.funded if p[0] != request.user_id or p[1] not in ("", request.org_id)]
            rows.memberships = [p for p in rows.memberships if p != (request.user_id, request.org_id)] \
                or [(request.user_id, request.org_id)]  # (then AddMember may bring it back)
        elif name == "AddMember":
            rows.memberships.append((request.user_id, request.org_id))

    @given(data=st.data())
    @settings(max_examples=1000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def fuzz(data):
        service, name, request_cls = data.draw(st.sampled_from(CALLS), label="rpc")
        request = data.draw(request_for(name, request_cls, rows), label="request")
        if name == "Reserve":
            reserve_request_ids.append(request.request_id)
        before = loop.run_until_complete(row_counts(conn, REST_CALLERS))
        try:
            response = getattr(stubs[service], name)(request)
        except grpc.RpcError as error:
            assert error.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), \
                f"{name}({request}) → {error.code()} {error.details()}"
            seen[name, error.code().name] += 1
            assert loop.run_until_complete(row_counts(conn, REST_CALLERS)) == before, \
                f"rejected {name}({request}) wrote rows"
            return
        seen[name, "OK"] += 1
        learn(name, request, response)

    try:
        fuzz()
        db = loop.run_until_complete(conn.fetch(
            """SELECT r.reservation_id::text AS id, r.status, r.charged_mc, u.credits_used
                 FROM reservations r LEFT JOIN usage_attribution u USING (reservation_id)
                WHERE r.caller = 'platform' AND r.request_id = ANY($1::text[])""",
            [rid for rid in reserve_request_ids if "\x00" not in rid]))
        found = loop.run_until_complete(violations(conn))
    finally:
        loop.run_until_complete(conn.close())
        loop.close()

    table = {}
    for (name, code), n in sorted(seen.items()):
        table.setdefault(name, []).append(f"{code}: {n}")
    lines = "\n".join(f"  {name:<22} {', '.join(codes)}" for name, codes in table.items())
    print(f"\ngRPC fuzz, {sum(seen.values())} calls, statuses by RPC:\n{lines}")
    print(f"reserved OK: {len(reserved)}, commits acknowledged: {len(acknowledged)} "
          f"({sum(acknowledged.values())} mc), releases acknowledged: {len(released)}, "
          f"reservations in the database: {len(db)}")
    assert len(table) >= 15, f"too few RPCs exercised: {sorted(table)}"
    for name in HOT_PATH:
        assert seen[name, "OK"] > 0, f"{name} never answered OK: {table.get(name)}"

    # The client's view and the database agree, both ways.
    in_db = {r["id"]: r for r in db}
    wrong = [f"reserved OK but not in the database: {rid}" for rid in reserved - set(in_db)]
    wrong += [f"in the database, never reserved OK: {rid}" for rid in set(in_db) - reserved]
    for rid, row in in_db.items():
        if (row["status"] == "committed") != (rid in acknowledged):
            wrong.append(f"{rid}: {row['status']} in the database, Commit acknowledged: {rid in acknowledged}")
        elif rid in acknowledged and not (row["charged_mc"] == row["credits_used"] == acknowledged[rid]):
            wrong.append(f"{rid}: acknowledged {acknowledged[rid]}, charged {row['charged_mc']}, "
                         f"attributed {row['credits_used']}")
        elif rid in released and row["status"] not in ("released", "expired"):
            wrong.append(f"{rid}: Release acknowledged, {row['status']} in the database")
    assert not wrong, f"{len(wrong)} disagreements, e.g. {wrong[:5]}"
    assert not found, f"invariants violated: {found}"


# ---- totals past the BIGINT range ----------------------------------------------------------------------------

BIGINT_MAX = 2**63 - 1
MAX_AMOUNT = 10**15  # the largest top-up, grant or Commit amount the contract allows


async def near_the_bigint_maximum(conn: asyncpg.Connection, org_id: str, user_id: str) -> None:
    """Pool total and individual limit within one maximal amount of the BIGINT maximum, each with its ledger
    entry (the state 9,224 maximal top-ups or grants would reach; made in SQL for speed)."""
    near = BIGINT_MAX - MAX_AMOUNT + 1
    async with conn.transaction():
        total = await conn.fetchval("SELECT total_mc FROM org_pools WHERE org_id = $1", org_id)
        await conn.execute("UPDATE org_pools SET total_mc = $2 WHERE org_id = $1", org_id, near)
        await conn.execute("""INSERT INTO ledger_entries (account, org_id, kind, delta_limit_mc, note)
                              VALUES ('pool', $1, 'top_up', $2, 'test: near the BIGINT maximum')""",
                           org_id, near - total)
        await conn.execute("""INSERT INTO pool_top_ups (org_id, amount_mc, purchase_reference, created_by)
                              VALUES ($1, $2, 'test: near the BIGINT maximum', 'test')""", org_id, near - total)
        limit = await conn.fetchval("SELECT limit_mc FROM individual_balances WHERE user_id = $1", user_id)
        await conn.execute("UPDATE individual_balances SET limit_mc = $2 WHERE user_id = $1", user_id, near)
        await conn.execute("""INSERT INTO ledger_entries (account, user_id, kind, delta_limit_mc, note)
                              VALUES ('individual', $1, 'grant', $2, 'test: near the BIGINT maximum')""",
                           user_id, near - limit)


@pytest.fixture
def own_authority(database_url, tokens):
    """An authority on a database of its own: the totals this test makes would overflow the session's usage sums
    (a QueryUsage over every user sums credits_used into a BIGINT)."""
    name = f"credit_bigint_{uuid.uuid4().hex[:8]}"

    async def create() -> str:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')  # a name made above, not input
        finally:
            await conn.close()
        url = database_url.rsplit("/", 1)[0] + "/" + name
        await migrate(url)
        return url

    url = asyncio.run(create())
    process = AuthorityProcess(url, tokens).start()
    yield process
    process.stop()


def test_totals_past_the_bigint_range_are_refused_not_internal(own_authority, tokens):
    """Every amount below is in range (1 … 10^15), but the account's total would pass 2^63 − 1: the authority
    must refuse with a status a caller can act on and write nothing, never INTERNAL (PostgreSQL's 22003).
    Found from the fuzzers' edge amounts (10^15): the total of an account has no bound of its own."""
    channel = grpc.insecure_channel(own_authority.addr)
    admin = Stub(admin_pb2_grpc.CreditAdminStub(channel), tokens.admin)
    spend = Stub(authority_pb2_grpc.CreditAuthorityStub(channel), tokens.spend)
    world = World(admin)
    org_id, user_id = world.org(1_000), world.user(individual_mc=1_000)
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(asyncpg.connect(own_authority.database_url))
    answers: dict[str, str] = {}
    try:
        loop.run_until_complete(near_the_bigint_maximum(conn, org_id, user_id))
        calls = {
            "TopUpPool": lambda: admin.TopUpPool(admin_pb2.TopUpPoolRequest(
                org_id=org_id, amount_millicredits=MAX_AMOUNT, purchase_reference=uuid.uuid4().hex)),
            "GrantIndividualCredits": lambda: admin.GrantIndividualCredits(admin_pb2.GrantIndividualCreditsRequest(
                user_id=user_id, amount_millicredits=MAX_AMOUNT, reason="test", reference=uuid.uuid4().hex)),
        }
        for name, call in calls.items():
            before = loop.run_until_complete(row_counts(conn))
            try:
                call()
                answers[name] = "OK"
            except grpc.RpcError as error:
                answers[name] = f"{error.code().name}: {error.details()}"
                assert loop.run_until_complete(row_counts(conn)) == before, f"a refused {name} wrote rows"

        # Commit: each charge above its hold is charged in full, so 9,224 overruns of 10^15 on holds of 1
        # millicredit pass the BIGINT maximum of the account's used credits.
        spender = world.user(individual_mc=10_000)
        with ThreadPoolExecutor(8) as pool:
            holds = list(pool.map(lambda _: spend.Reserve(authority_pb2.ReserveRequest(
                request_id=uuid.uuid4().hex, user_id=spender, amount_millicredits=1)).reservation_id,
                range(BIGINT_MAX // MAX_AMOUNT + 1)))

            def commit(reservation_id: str) -> str:
                try:
                    spend.Commit(authority_pb2.CommitRequest(reservation_id=reservation_id,
                                                             amount_millicredits=MAX_AMOUNT))
                    return "OK"
                except grpc.RpcError as error:
                    return f"{error.code().name}: {error.details()}"

            commits = Counter(pool.map(commit, holds))
        answers["Commit"] = ", ".join(f"{answer} ×{n}" for answer, n in commits.items() if answer != "OK")
        found = loop.run_until_complete(violations(conn))
    finally:
        loop.run_until_complete(conn.close())
        loop.close()
        channel.close()
    print(f"\nanswers past the BIGINT maximum: {answers}")
    internal = {name: answer for name, answer in answers.items() if "INTERNAL" in answer or "UNKNOWN" in answer}
    assert not internal, f"totals past 2^63 - 1 answered INTERNAL/UNKNOWN: {internal}"
    assert not found, f"invariants violated: {found}"
