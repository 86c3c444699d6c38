"""Rate limits in the console's REST API, against the real inference service and authority: owners and
admins set the organization's and each member's limits (and an org key's), members see the org's and
their own with what is left now, individuals see theirs; a member's attempt to set is 403 and a bad
value 400 naming the field in `param`, and neither changes anything (checked through ListRateLimits)."""

from __future__ import annotations

import grpc
import pytest
from helpers import error_info, reserve_request
from rest_support import make_key

from credit.v1 import admin_pb2, authority_pb2

from .conftest import Org
from .test_console_api import get, post


def authority_limits(admin, org_id: str = "", user_id: str = "") -> dict[str, admin_pb2.RateLimit]:
    answer = admin.ListRateLimits(admin_pb2.ListRateLimitsRequest(org_id=org_id, user_id=user_id))
    return {r.key_id or r.user_id or r.org_id: r for r in answer.limits}


def shown(inference, key: str) -> dict:
    response = get(inference, key, "/limits")
    assert response.status_code == 200, response.text
    return response.json()


def by_scope(view: dict) -> dict[tuple[str, str | None], dict]:
    return {(row["scope"], row["key_id"] or row["user_id"]): row for row in view["data"]}


def test_an_admin_sets_the_orgs_and_a_members_limits_and_the_member_sees_them(console_inference, org: Org,
                                                                              admin, spend):
    set_org = post(console_inference, org.keys["owner"], "/limits",
                   {"requests_per_minute": 10, "tokens_per_minute": 600})
    assert set_org.status_code == 200, set_org.text
    assert (set_org.json()["scope"], set_org.json()["requests_per_minute"], set_org.json()["max_parallel"]) == (
        "org", 10, None)
    body = {"user_id": org.member, "requests_per_minute": "2", "max_parallel": 3, "credits_per_day": "5",
            "credits_per_month": 12.5}
    set_member = post(console_inference, org.keys["admin"], "/limits", body)
    assert set_member.status_code == 200, set_member.text
    row = set_member.json()
    assert (row["scope"], row["user_id"], row["requests_per_minute"], row["max_parallel"]) == (
        "member", org.member, 2, 3)
    assert (row["credits_per_day"], row["credits_per_month_millicredits"]) == ("5.000", 12_500)
    assert post(console_inference, org.keys["owner"], "/limits",
                {"user_id": org.other, "max_parallel": 9}).status_code == 200
    in_authority = authority_limits(admin, org.org_id)
    assert (in_authority[org.member].requests_per_minute, in_authority[org.member].credits_per_day_millicredits,
            in_authority[org.org_id].tokens_per_minute) == (2, 5_000, 600)

    hold = spend.Reserve(reserve_request(org.member, 1_250, org.org_id, estimated_tokens=400))
    mine = shown(console_inference, org.keys["member"])
    assert (mine["scope"], mine["org_id"], mine["user_id"]) == ("member", org.org_id, org.member)
    rows = by_scope(mine)
    assert set(rows) == {("org", None), ("member", org.member)}  # not the other member's
    me = rows[("member", org.member)]
    assert (me["requests_remaining"], me["open_holds"], me["credits_today"], me["credits_this_month"]) == (
        1, 1, "1.250", "1.250")
    assert (me["tokens_per_minute"], me["tokens_remaining"]) == (None, None)
    org_row = rows[("org", None)]  # GCRA refills as time passes: 1 request per 6 s, 10 tokens per s
    assert org_row["requests_remaining"] == 9 and 200 <= org_row["tokens_remaining"] < 300
    everyone = by_scope(shown(console_inference, org.keys["owner"]))
    assert everyone[("member", org.other)]["max_parallel"] == 9 and ("member", org.member) in everyone

    # What the console shows is what the authority enforces: the member's third request this minute waits.
    second = spend.Reserve(reserve_request(org.member, 1_000, org.org_id))
    with pytest.raises(grpc.RpcError) as refused:
        spend.Reserve(reserve_request(org.member, 1_000, org.org_id))
    info = error_info(refused.value)
    assert info and info.reason == "RATE_LIMITED" and info.metadata["scope"] == "member"
    for h in (hold, second):
        spend.Release(authority_pb2.ReleaseRequest(reservation_id=h.reservation_id, reason="done"))

    cleared = post(console_inference, org.keys["owner"], "/limits", {"user_id": org.member, "clear": True})
    assert cleared.status_code == 200 and cleared.json()["requests_per_minute"] is None
    assert set(by_scope(shown(console_inference, org.keys["member"]))) == {("org", None)}


def test_an_admin_limits_an_org_key_and_an_individual_sees_their_own(console_inference, org: Org, admin, world):
    _, key_id = make_key(admin, org.member, org.org_id)
    answer = post(console_inference, org.keys["owner"], "/limits", {"key_id": key_id, "tokens_per_minute": 800})
    assert answer.status_code == 200, answer.text
    assert (answer.json()["scope"], answer.json()["key_id"], answer.json()["user_id"]) == ("key", key_id, org.member)
    assert by_scope(shown(console_inference, org.keys["member"]))[("key", key_id)]["tokens_remaining"] == 800
    foreign_org, foreign_user = world.funded_member(allocation_mc=1_000)
    _, foreign_key = make_key(admin, foreign_user, foreign_org)
    other = post(console_inference, org.keys["owner"], "/limits", {"key_id": foreign_key, "max_parallel": 1})
    assert other.status_code == 400 and other.json()["error"]["param"] == "key_id"
    assert foreign_key not in authority_limits(admin, foreign_org)

    solo = world.user(10_000)
    solo_key, _ = make_key(admin, solo)
    assert shown(console_inference, solo_key) == {"scope": "individual", "org_id": None, "user_id": solo, "data": []}
    admin.SetRateLimit(admin_pb2.SetRateLimitRequest(user_id=solo, requests_per_minute=30, max_parallel=2))
    view = shown(console_inference, solo_key)
    assert [(r["scope"], r["user_id"], r["requests_per_minute"], r["requests_remaining"], r["max_parallel"])
            for r in view["data"]] == [("individual", solo, 30, 30, 2)]
    refused = post(console_inference, solo_key, "/limits", {"requests_per_minute": 1000})
    assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"
    assert authority_limits(admin, user_id=solo)[solo].requests_per_minute == 30


@pytest.mark.parametrize("body", [
    {"user_id": "MEMBER", "requests_per_minute": 1_000},
    {"requests_per_minute": 1_000},
    {"user_id": "MEMBER", "clear": True},
    {"user_id": "MEMBER", "requests_per_minute": -5},  # refused for the role, before any value is looked at
])
def test_a_member_may_not_set_limits(console_inference, org: Org, admin, body):
    post(console_inference, org.keys["owner"], "/limits", {"user_id": org.member, "requests_per_minute": 7})
    before = authority_limits(admin, org.org_id)
    body = {k: org.member if v == "MEMBER" else v for k, v in body.items()}
    refused = post(console_inference, org.keys["member"], "/limits", body)
    assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error", refused.text
    assert authority_limits(admin, org.org_id) == before


@pytest.mark.parametrize(("body", "param"), [
    ({"requests_per_minute": 0}, "requests_per_minute"),
    ({"requests_per_minute": -1}, "requests_per_minute"),
    ({"requests_per_minute": "ten"}, "requests_per_minute"),
    ({"requests_per_minute": True}, "requests_per_minute"),
    ({"requests_per_minute": 10**30}, "requests_per_minute"),
    ({"tokens_per_minute": 1_000_000_001}, "tokens_per_minute"),
    ({"max_parallel": 100_001}, "max_parallel"),
    ({"max_parallel": 1.5}, "max_parallel"),
    ({"credits_per_day": "0"}, "credits_per_day"),
    ({"credits_per_month": "1.0001"}, "credits_per_month"),
    ({"user_id": "", "credits_per_day": "5"}, "credits_per_day"),  # credit ceilings are for members
    ({"user_id": "NOBODY", "requests_per_minute": 5}, "user_id"),
    ({"user_id": "no spaces", "requests_per_minute": 5}, "user_id"),
    ({"key_id": "ck_nope", "requests_per_minute": 5}, "key_id"),
    ({"requests_per_minute": 5, "clear": True}, "clear"),
    ({"clear": "yes"}, "clear"),
    ({}, "requests_per_minute"),  # nothing to set
])
def test_a_bad_value_is_400_naming_the_field_and_changes_nothing(console_inference, org: Org, admin, world,
                                                                 body, param):
    post(console_inference, org.keys["owner"], "/limits",
         {"user_id": org.member, "requests_per_minute": 7, "credits_per_month": "3"})
    before = authority_limits(admin, org.org_id)
    body = {"user_id": org.member, **body}
    if body["user_id"] == "NOBODY":
        body["user_id"] = world.user()
    if "key_id" in body:
        del body["user_id"]
    refused = post(console_inference, org.keys["admin"], "/limits", body)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param) and param in error["message"]
    assert authority_limits(admin, org.org_id) == before
