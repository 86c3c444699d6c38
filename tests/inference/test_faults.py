"""Fail closed when the authority is down; never lose a commit when it dies mid-call."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import openai
import pytest
from conftest import AuthorityProcess
from invariants import assert_invariants

from credit.v1 import authority_pb2

from .conftest import InferenceProcess, make_key, sdk

MESSAGES = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def own_authority(database_url, tokens):
    """An authority of this module's own, so killing it disturbs no other test."""
    process = AuthorityProcess(database_url, tokens).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def own_inference(own_authority, tokens, models_file):
    process = InferenceProcess(own_authority, tokens.spend, models_file).start()
    yield process
    process.stop()


async def test_authority_down_is_503_and_no_model_is_called(own_authority, own_inference, world, admin, upstream):
    org, user = world.funded_member(allocation_mc=100_000)
    key, _ = make_key(admin, user)
    client = sdk(own_inference, key)
    client.chat.completions.create(model="up-chat", messages=MESSAGES)
    own_authority.stop(kill=True)
    try:
        before = upstream.calls["up-chat"]
        for _ in range(3):
            with pytest.raises(openai.APIStatusError) as raised:
                client.chat.completions.create(model="up-chat", messages=MESSAGES)
            assert raised.value.status_code == 503
        time.sleep(1)  # the key cache has expired: verification itself now fails closed
        with pytest.raises(openai.APIStatusError) as raised:
            client.chat.completions.create(model="up-chat", messages=MESSAGES)
        assert raised.value.status_code == 503
        assert upstream.calls["up-chat"] == before, "a model was called without a hold"
    finally:
        own_authority.start(port=own_authority.port)
    # Back by itself, without restarting the inference service, within seconds.
    restarted = time.monotonic()
    while True:
        try:
            client.chat.completions.create(model="up-chat", messages=MESSAGES)
            break
        except openai.APIStatusError as error:
            assert error.status_code == 503
            assert time.monotonic() - restarted < 5, "service did not come back within 5 s"
            time.sleep(0.1)


async def test_authority_killed_between_the_call_and_the_commit_charges_exactly_once(
        own_authority, own_inference, world, admin, spend, db, upstream):
    org, user = world.funded_member(allocation_mc=100_000)
    key, _ = make_key(admin, user)
    client = sdk(own_inference, key)
    before = upstream.calls["up-delay"]  # the upstream is the session's: other tests call up-delay too
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        call = pool.submit(client.chat.completions.with_raw_response.create, model="up-delay", messages=MESSAGES)
        deadline = time.monotonic() + 10
        while upstream.calls["up-delay"] == before and time.monotonic() < deadline:
            time.sleep(0.02)
        own_authority.stop(kill=True)  # the model is answering; the authority is gone
        raw = call.result(timeout=60)
    assert raw.http_response.status_code == 200, "the client still gets its answer"
    assert raw.headers["X-Billing-Status"] == "queued"
    request_id = raw.headers["X-Request-Id"]
    assert await db.fetchval("SELECT count(*) FROM usage_attribution WHERE request_id LIKE '%:' || $1",
                             request_id) == 0

    own_authority.start(port=own_authority.port)
    deadline = time.monotonic() + 20
    count = 0
    while time.monotonic() < deadline and count == 0:
        count = await db.fetchval("SELECT count(*) FROM usage_attribution WHERE request_id LIKE '%:' || $1",
                                  request_id)
        await asyncio.sleep(0.1)
    assert count == 1, "the queued commit never landed"
    await asyncio.sleep(1)  # further replays must not charge again
    rows = await db.fetch("SELECT credits_used FROM usage_attribution WHERE request_id LIKE '%:' || $1", request_id)
    assert len(rows) == 1 and rows[0]["credits_used"] > 0
    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=user))
    assert balance.used_millicredits == rows[0]["credits_used"] and balance.held_millicredits == 0
    await assert_invariants(db)
