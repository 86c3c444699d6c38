"""Who the REST service says it acts for (inference_service/acting.py): the claims are cleaned and bounded
before they become gRPC metadata, and they go with CreditAdmin calls only, never with the hot path's
Reserve/Commit/Release/GetBalance (whose metadata stays the bearer token and the request id)."""

from __future__ import annotations

import contextvars

from credit_service import logs
from inference_service import acting
from inference_service.authority_client import AuthorityClient
from inference_service.outbox import CommitOutbox


def test_claims_are_printable_ascii_and_bounded():
    assert acting.clean("user:alice (session)") == "user:alice (session)"
    assert acting.clean("a\x00b\r\nc\x1b[31md\x7fe\x85f") == "abc[31mdef"  # C0, DEL and C1 dropped
    assert acting.clean("zoë ☃") == "zo\\xeb \\u2603"  # metadata is ASCII: the rest escaped, not lost
    assert len(acting.clean("x" * 500)) == acting.MAX_CLAIM == 200
    assert len(acting.clean("é" * 200)) == 200
    assert acting.describe("alice", "api_key", "ck_0123456789abcdef") == "user:alice (api_key ck_0123456789abcdef)"
    assert acting.describe("bot", "api_key", "ck_0123456789abcdef", service_key=True) == \
        "user:bot (service_key ck_0123456789abcdef)"
    assert acting.describe("alice", "session") == "user:alice (session)"
    assert acting.describe("alice", "access_token") == "user:alice (access_token)"


async def test_the_claims_go_with_creditadmin_calls_only(tmp_path):
    client = AuthorityClient("127.0.0.1:9", "tok", timeout=1, key_cache_seconds=1,
                             outbox=CommitOutbox(tmp_path / "outbox.sqlite3"))
    try:
        def in_a_request() -> tuple[tuple, tuple]:
            logs.request_id.set("req-1")
            acting.forwarded_for.set(acting.clean("203.0.113.9"))
            acting.act_for("alice\n", "api_key", "ck_0123456789abcdef")
            return client._md, client.admin.metadata()

        hot, admin = contextvars.copy_context().run(in_a_request)
        assert hot == (("authorization", "Bearer tok"), ("x-request-id", "req-1"))
        assert admin == (*hot, ("x-on-behalf-of", "user:alice (api_key ck_0123456789abcdef)"),
                         ("x-forwarded-for", "203.0.113.9"))
        # Outside a request (the outbox's replays, start-up): nothing claimed.
        assert client.admin.metadata() == client._md == (("authorization", "Bearer tok"),)
    finally:
        await client.close()
        client.outbox.close()
