"""Hypothesis-generated requests for every RPC, built from the proto descriptors:
never UNKNOWN or INTERNAL, and no row written when a request is rejected."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
from conftest import Stub
from google.protobuf import descriptor, struct_pb2, timestamp_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from invariants import row_counts

from credit.v1 import admin_pb2, admin_pb2_grpc, authority_pb2, authority_pb2_grpc

FD = descriptor.FieldDescriptor
INT64 = (-(2**63), 2**63 - 1)
INT32 = (-(2**31), 2**31 - 1)

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


def message_strategy(message_cls):
    fields = {}
    for field in message_cls.DESCRIPTOR.fields:
        if field.type == FD.TYPE_STRING:
            fields[field.name] = TEXT
        elif field.type in (FD.TYPE_INT64, FD.TYPE_SINT64):
            fields[field.name] = integers(INT64)
        elif field.type == FD.TYPE_INT32:
            fields[field.name] = integers(INT32)
        elif field.type == FD.TYPE_ENUM:
            fields[field.name] = st.integers(-3, 8)
        elif field.type == FD.TYPE_BOOL:
            fields[field.name] = st.booleans()
        elif field.message_type is struct_pb2.Struct.DESCRIPTOR:
            fields[field.name] = STRUCT
        elif field.message_type is timestamp_pb2.Timestamp.DESCRIPTOR:
            fields[field.name] = st.builds(timestamp_pb2.Timestamp, seconds=st.integers(0, 4_000_000_000))

    @st.composite
    def build(draw):
        message = message_cls()
        for name, strategy in fields.items():
            if not draw(st.booleans()):
                continue
            value = draw(strategy)
            target = getattr(message, name)
            if isinstance(target, struct_pb2.Struct):
                try:
                    target.update(value)
                except (ValueError, TypeError):
                    pass
            elif isinstance(target, timestamp_pb2.Timestamp):
                target.CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    return build()


def rpcs(service_descriptor, module):
    found = []
    for method in service_descriptor.methods:
        request_cls = getattr(module, method.input_type.name, None) or getattr(
            authority_pb2 if module is admin_pb2 else admin_pb2, method.input_type.name)
        found.append((method.name, request_cls))
    return found


AUTHORITY_RPCS = rpcs(authority_pb2.DESCRIPTOR.services_by_name["CreditAuthority"], authority_pb2)
ADMIN_RPCS = rpcs(admin_pb2.DESCRIPTOR.services_by_name["CreditAdmin"], admin_pb2)
CALLS = st.one_of(
    *[st.tuples(st.just(("authority", name)), message_strategy(cls)) for name, cls in AUTHORITY_RPCS],
    *[st.tuples(st.just(("admin", name)), message_strategy(cls)) for name, cls in ADMIN_RPCS])


def test_every_rpc_is_covered():
    assert {n for n, _ in AUTHORITY_RPCS} == {"Check", "Reserve", "Commit", "Release", "GetBalance"}
    assert len(ADMIN_RPCS) >= 14


def test_generated_requests_never_fail_unknown_or_internal_and_rejections_write_nothing(channel, tokens,
                                                                                        database_url):
    stubs = {"authority": Stub(authority_pb2_grpc.CreditAuthorityStub(channel), tokens.spend),
             "admin": Stub(admin_pb2_grpc.CreditAdminStub(channel), tokens.admin)}
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(asyncpg.connect(database_url))
    seen = {}

    @given(call=CALLS)
    @settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def fuzz(call):
        (service, name), request = call
        before = loop.run_until_complete(row_counts(conn))
        try:
            getattr(stubs[service], name)(request)
            seen.setdefault(name, set()).add("OK")
        except grpc.RpcError as error:
            assert error.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), \
                f"{name}({request}) → {error.code()} {error.details()}"
            seen.setdefault(name, set()).add(error.code().name)
            assert loop.run_until_complete(row_counts(conn)) == before, f"rejected {name} wrote rows"

    try:
        fuzz()
    finally:
        loop.run_until_complete(conn.close())
        loop.close()
    assert len(seen) >= 15, f"too few RPCs exercised: {sorted(seen)}"
