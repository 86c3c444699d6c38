"""A request's own budget (issue 14, README "Rate limits"): `X-Max-Cost` holds the smaller of it and the
worst case by capping `max_tokens` (402 when not even one output token fits), `X-Fit-To-Budget: true` caps
`max_tokens` to the credits available instead of answering 402; `X-Max-Tokens-Capped` says so. Checked to
the millicredit against the test catalogue's prices (input 0.1 mc a token, output 0.2 mc a token)."""

from __future__ import annotations

import json

import httpx
import pytest
from rest_support import make_key

from credit.v1 import authority_pb2
from credit_service.money import format_credits

MESSAGES = [{"role": "user", "content": "Say hello."}]
CHAT = "/chat/completions"


def worst_mc(prompt_tokens: int, output_tokens: int) -> int:
    """The catalogue's price of these tokens, rounded up to the millicredit: (prompt + 2 × output) / 10."""
    return max(-(-(prompt_tokens + 2 * output_tokens) // 10), 1)


def post(inference, key: str, body: dict, path: str = CHAT, **headers: str) -> httpx.Response:
    return httpx.post(inference.base_url + path, json=body, timeout=60,
                      headers={"Authorization": f"Bearer {key}", **headers})


async def one_call(db, user_id: str) -> tuple[dict, dict]:
    """The user's only reservation and its attribution row (with its metadata)."""
    [row] = await db.fetch("""SELECT r.*, u.credits_used, u.request_metadata FROM reservations r
                              LEFT JOIN usage_attribution u USING (reservation_id) WHERE r.user_id = $1""", user_id)
    return dict(row), json.loads(row["request_metadata"]) if row["request_metadata"] else {}


def check_capped(response: httpx.Response, row: dict, usage: dict, sent: dict, ceiling_mc: int, n: int = 1) -> int:
    """The cap is the largest max_tokens whose worst case fits the ceiling, the provider was sent it, and
    the charge is the real tokens' price, at most the hold. Returns the charge."""
    capped = int(response.headers["X-Max-Tokens-Capped"])
    assert sent["max_tokens"] == capped == usage["max_tokens"]
    prompt = row["estimated_tokens"] - capped * n  # the input the hold paid for
    assert row["amount_mc"] == worst_mc(prompt, capped * n) <= ceiling_mc < worst_mc(prompt, (capped + 1) * n)
    charged = worst_mc(usage["prompt_tokens"], usage["completion_tokens"])
    assert row["status"] == "committed" and row["credits_used"] == row["charged_mc"] == charged <= row["amount_mc"]
    return charged


async def test_x_max_cost_caps_max_tokens_to_fit_and_the_charge_is_exact(inference, member, upstream, spend, db):
    response = post(inference, member.key, {"model": "up-count", "messages": MESSAGES}, **{"X-Max-Cost": "0.030"})
    assert response.status_code == 200, response.text
    row, usage = await one_call(db, member.user_id)
    charged = check_capped(response, row, usage, upstream.app.state.bodies[-1], 30)
    assert int(response.headers["X-Max-Tokens-Capped"]) < 256  # the catalogue's cap, without X-Max-Cost
    assert response.headers["X-Cost-Incurred"] == format_credits(charged)
    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=member.user_id, org_id=member.org_id))
    assert (balance.used_millicredits, balance.held_millicredits, balance.available_millicredits) == (
        charged, 0, 100_000 - charged)


async def test_x_max_cost_caps_a_stream_of_two_choices(inference, member, upstream, db):
    with httpx.stream("POST", inference.base_url + CHAT, timeout=60,
                      headers={"Authorization": f"Bearer {member.key}", "X-Max-Cost": "0.025"},
                      json={"model": "up-count", "messages": MESSAGES, "n": 2, "stream": True,
                            "stream_options": {"include_usage": True}}) as response:
        assert response.status_code == 200
        list(response.iter_lines())
    row, usage = await one_call(db, member.user_id)
    check_capped(response, row, usage, upstream.app.state.bodies[-1], 25, n=2)


async def test_x_max_cost_above_the_worst_case_changes_nothing(inference, member, upstream, db):
    response = post(inference, member.key, {"model": "up-count", "messages": MESSAGES}, **{"X-Max-Cost": "100"})
    assert response.status_code == 200, response.text
    assert "X-Max-Tokens-Capped" not in response.headers
    assert upstream.app.state.bodies[-1]["max_tokens"] == 256
    row, _ = await one_call(db, member.user_id)
    assert row["amount_mc"] == worst_mc(row["estimated_tokens"] - 256, 256)


@pytest.mark.parametrize("path, body", [
    (CHAT, {"model": "up-count", "messages": MESSAGES}),
    (CHAT, {"model": "up-count", "messages": MESSAGES, "stream": True}),
    ("/images/generations", {"model": "up-image", "prompt": "a ledger"})])
async def test_an_x_max_cost_below_a_minimal_call_is_402_and_nothing_is_held(inference, member, upstream, db,
                                                                             path, body):
    before = sum(upstream.calls.values())
    response = post(inference, member.key, body, path, **{"X-Max-Cost": "0.001"})
    assert response.status_code == 402, response.text
    error = response.json()["error"]
    assert (error["code"], error["max_cost"]) == ("max_cost_too_low", "0.001")
    assert sum(upstream.calls.values()) == before
    assert await db.fetch("SELECT 1 FROM reservations WHERE user_id = $1", member.user_id) == []


@pytest.mark.parametrize("header, value", [
    ("X-Max-Cost", "abc"), ("X-Max-Cost", "-1"), ("X-Max-Cost", "0"), ("X-Max-Cost", "0.0001"),
    ("X-Max-Cost", "NaN"), ("X-Max-Cost", "Infinity"), ("X-Max-Cost", "1e20"), ("X-Max-Cost", ""),
    ("X-Max-Cost", "1e999999999"), ("X-Fit-To-Budget", "yes"), ("X-Fit-To-Budget", "")])
async def test_bad_budget_headers_are_400_naming_the_header(inference, member, upstream, db, header, value):
    before = sum(upstream.calls.values())
    response = post(inference, member.key, {"model": "up-count", "messages": MESSAGES}, **{header: value})
    assert response.status_code == 400, response.text
    assert header in response.json()["error"]["message"]
    assert sum(upstream.calls.values()) == before
    assert await db.fetch("SELECT 1 FROM reservations WHERE user_id = $1", member.user_id) == []


async def test_fit_to_budget_caps_to_the_credits_available_instead_of_402(inference, world, admin, upstream,
                                                                          spend, db):
    org_id, user_id = world.funded_member(allocation_mc=40)
    key, _ = make_key(admin, user_id)
    body = {"model": "up-count", "messages": MESSAGES}
    refused = post(inference, key, body)
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "insufficient_credits"
    assert post(inference, key, body, **{"X-Fit-To-Budget": "false"}).status_code == 402
    response = post(inference, key, body, **{"X-Fit-To-Budget": "true"})
    assert response.status_code == 200, response.text
    row, usage = await one_call(db, user_id)
    charged = check_capped(response, row, usage, upstream.app.state.bodies[-1], 40)
    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=user_id, org_id=org_id))
    assert (balance.used_millicredits, balance.held_millicredits, balance.available_millicredits) == (
        charged, 0, 40 - charged)
    assert response.headers["X-Credits-Remaining"] == format_credits(40 - charged)


async def test_fit_to_budget_with_not_even_one_token_payable_is_402(inference, world, admin, upstream, db):
    _, user_id = world.funded_member(allocation_mc=3)
    key, _ = make_key(admin, user_id)
    before = sum(upstream.calls.values())
    response = post(inference, key, {"model": "up-count", "messages": MESSAGES}, **{"X-Fit-To-Budget": "true"})
    assert response.status_code == 402, response.text
    assert response.json()["error"]["available"] == "0.003"
    assert sum(upstream.calls.values()) == before
    assert await db.fetch("SELECT 1 FROM reservations WHERE user_id = $1", user_id) == []
