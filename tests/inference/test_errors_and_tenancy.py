"""401/402/403/404/502 with OpenAI-shaped bodies; the body's `user` never moves the bill."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from credit.v1 import admin_pb2, authority_pb2

from .conftest import make_key, sdk

MESSAGES = [{"role": "user", "content": "Hello"}]


def test_no_key_bad_key_and_revoked_key_are_401(inference, member, admin):
    response = httpx.post(f"{inference.base_url}/chat/completions", json={"model": "demo-chat",
                                                                          "messages": MESSAGES})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        sdk(inference, "ck_0000000000000000.not-a-real-key").chat.completions.create(model="demo-chat",
                                                                                      messages=MESSAGES)
    with pytest.raises(openai.AuthenticationError):
        sdk(inference, "garbage").models.list()

    client = sdk(inference, member.key)
    client.chat.completions.create(model="demo-chat", messages=MESSAGES)  # works, and is cached
    admin.RevokeApiKey(admin_pb2.RevokeApiKeyRequest(key_id=member.key_id))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            client.chat.completions.create(model="demo-chat", messages=MESSAGES)
        except openai.AuthenticationError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("a revoked key kept working for more than 10 s")


def test_estimate_above_available_is_402_and_nothing_is_called(inference, world, admin, spend, upstream):
    org_id, user_id = world.funded_member(allocation_mc=5)
    key, _ = make_key(admin, user_id)
    before = upstream.calls["up-chat"]
    with pytest.raises(openai.APIStatusError) as raised:
        sdk(inference, key).chat.completions.create(model="up-chat", messages=MESSAGES, max_tokens=200)
    assert raised.value.status_code == 402
    error = raised.value.body
    assert error["type"] == "insufficient_credits" and error["available"] == "0.005"
    assert error["funding"] == f"org:{org_id}"
    assert upstream.calls["up-chat"] == before
    assert spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=user_id)).held_millicredits == 0


def test_foreign_org_is_403(inference, member, world):
    foreign = world.org(10_000)
    client = sdk(inference, member.key, organization=foreign)
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="demo-chat", messages=MESSAGES)


def test_key_bound_to_an_org_cannot_spend_in_another(inference, world, admin):
    org_a, user = world.funded_member(allocation_mc=10_000)
    org_b = world.org(10_000)
    world.member(org_b, user, 10_000)
    key, _ = make_key(admin, user, org_a)
    with pytest.raises(openai.PermissionDeniedError):
        sdk(inference, key, organization=org_b).chat.completions.create(model="demo-chat", messages=MESSAGES)
    raw = sdk(inference, key, organization=org_a).chat.completions.with_raw_response.create(
        model="demo-chat", messages=MESSAGES)
    assert raw.headers["X-Funding-Source"] == f"org:{org_a}"


def test_unknown_model_is_404_and_a_model_of_another_mode_400(inference, member):
    with pytest.raises(openai.NotFoundError) as raised:
        sdk(inference, member.key).chat.completions.create(model="gpt-17-ultra", messages=MESSAGES)
    assert raised.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as raised:
        sdk(inference, member.key).images.generate(model="demo-chat", prompt="not an image model")
    assert raised.value.body["code"] == "wrong_endpoint_for_model"
    assert "use POST /api/v1/llm/chat/completions" in raised.value.body["message"]


async def test_upstream_failure_is_502_and_the_hold_is_released(inference, member, spend, db, upstream):
    before = upstream.calls["up-fail"]
    with pytest.raises(openai.APIStatusError) as raised:
        sdk(inference, member.key).chat.completions.create(model="up-fail", messages=MESSAGES)
    assert raised.value.status_code == 502
    assert raised.value.body["type"] == "upstream_error"
    assert upstream.calls["up-fail"] > before
    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=member.user_id))
    assert (balance.used_millicredits, balance.held_millicredits) == (0, 0)
    statuses = await db.fetch("SELECT status FROM reservations WHERE user_id = $1", member.user_id)
    assert [r["status"] for r in statuses] == ["released"]


async def test_body_user_never_spends_someone_elses_credits(inference, world, admin, spend, db):
    org, alice = world.funded_member(allocation_mc=50_000, pool_mc=100_000)
    bob = world.user()
    world.member(org, bob, 50_000)
    alice_key, _ = make_key(admin, alice)
    raw = sdk(inference, alice_key).chat.completions.with_raw_response.create(
        model="demo-chat", messages=MESSAGES, user=bob)
    assert raw.http_response.status_code == 200
    bob_balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=bob))
    alice_balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=alice))
    assert bob_balance.used_millicredits == 0 and alice_balance.used_millicredits > 0
    row = await db.fetchrow("SELECT user_id, request_metadata->>'end_user' AS end_user FROM usage_attribution "
                            "WHERE request_id LIKE '%:' || $1", raw.headers["X-Request-Id"])
    assert (row["user_id"], row["end_user"]) == (alice, bob)


async def test_service_key_may_bill_members_of_its_own_org_only(inference, world, admin, spend):
    org, owner = world.org(pool_mc=60_000), world.user()
    world.member(org, owner, 10_000, role=admin_pb2.MEMBER_ROLE_OWNER)  # a service key needs an owner or admin
    member = world.user()
    world.member(org, member, 10_000)
    outsider_org, outsider = world.funded_member(allocation_mc=10_000)
    service_key, _ = make_key(admin, owner, org, service=True)
    client = sdk(inference, service_key)
    raw = client.chat.completions.with_raw_response.create(model="demo-chat", messages=MESSAGES, user=member)
    assert raw.headers["X-Funding-Source"] == f"org:{org}"
    assert spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=member)).used_millicredits > 0
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="demo-chat", messages=MESSAGES, user=outsider)
    assert spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=outsider)).used_millicredits == 0


def test_bad_bodies_are_400_in_openais_shape(inference, member):
    headers = {"Authorization": f"Bearer {member.key}"}
    cases = [
        {"model": "demo-chat", "messages": []},
        {"model": "demo-chat"},
        {"model": "demo-chat", "messages": [{"role": "wizard", "content": "hi"}]},
        {"model": "demo-chat", "messages": MESSAGES, "max_tokens": 0},
        {"model": "demo-chat", "messages": MESSAGES, "max_tokens": -5},
        {"model": "demo-chat", "messages": MESSAGES, "temperature": 9},
        {"model": "demo-chat", "messages": MESSAGES, "n": 1000},
        {"model": "", "messages": MESSAGES},
    ]
    for body in cases:
        response = httpx.post(f"{inference.base_url}/chat/completions", json=body, headers=headers)
        assert response.status_code == 400, body
        assert response.json()["error"]["type"] == "invalid_request_error"
    response = httpx.post(f"{inference.base_url}/chat/completions", content=b"{not json",
                          headers={**headers, "Content-Type": "application/json"})
    assert response.status_code == 400
    response = httpx.post(f"{inference.base_url}/chat/completions", content=b"model=demo-chat", headers=headers)
    assert response.status_code == 415
