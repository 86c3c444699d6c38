"""The console's REST API: org roles enforced by the REST layer (members get 403
on admin endpoints and never see other members), admin changes reflected by the
authority, clear errors, usage analytics and CSV, keys, alerts; the static
console served from this origin only."""

from __future__ import annotations

import csv
import hashlib
import io
import re
import time
import uuid

import httpx
import pytest

from credit.v1 import admin_pb2, authority_pb2
from inference_service.console import STATIC_DIR

from .conftest import Org, auth, chat

API = "/api/v1/console"


def get(inference, key: str, path: str, **params) -> httpx.Response:
    return httpx.get(f"{inference.url}{API}{path}", headers=auth(key), params=params, timeout=30)


def post(inference, key: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{inference.url}{API}{path}", headers=auth(key), json=body, timeout=30)


def delete(inference, key: str, path: str) -> httpx.Response:
    return httpx.delete(f"{inference.url}{API}{path}", headers=auth(key), timeout=30)


def members(admin, org_id: str) -> dict[str, admin_pb2.Member]:
    return {m.user_id: m for m in admin.ListMembers(admin_pb2.ListMembersRequest(org_id=org_id)).members}


def test_roles_and_views(console_inference, org: Org, world, admin):
    me = get(console_inference, org.keys["owner"], "/me").json()
    assert (me["user_id"], me["org_id"], me["role"], me["view"]) == (org.owner, org.org_id, "owner", "admin")
    assert me["balance"]["limit"] == "200.000" and me["balance"]["funding_source"] == f"org:{org.org_id}"
    assert get(console_inference, org.keys["admin"], "/me").json()["view"] == "admin"
    me = get(console_inference, org.keys["member"], "/me").json()
    assert (me["role"], me["view"], me["balance"]["available"]) == ("member", "member", "100.000")

    solo = world.user(individual_mc=7_000)
    from rest_support import make_key

    solo_key = make_key(admin, solo)[0]
    me = get(console_inference, solo_key, "/me").json()
    assert (me["view"], me["org_id"], me["balance"]["available"]) == ("individual", "", "7.000")
    assert get(console_inference, solo_key, "/alerts").json() == {"webhook": None, "thresholds": [], "events": []}

    assert get(console_inference, "ck_0000000000000000.nope", "/me").status_code == 401
    service_key = make_key(admin, org.owner, org.org_id, service=True)[0]
    assert get(console_inference, service_key, "/me").status_code == 403
    other_org = world.org(1_000)
    response = httpx.get(f"{console_inference.url}{API}/me", timeout=30,
                         headers={**auth(org.keys["owner"]), "OpenAI-Organization": other_org})
    assert response.status_code == 403 and "not a member" in response.json()["error"]["message"]


def test_a_member_gets_403_on_every_admin_endpoint_and_changes_nothing(console_inference, org: Org, admin):
    before = members(admin, org.org_id)
    key = org.keys["member"]
    calls = [
        get(console_inference, key, "/org"),
        post(console_inference, key, "/org/allocations", {"user_id": org.member, "allocation": "900"}),
        post(console_inference, key, "/org/allocations", {"user_id": org.other, "allocation": "0"}),
        post(console_inference, key, "/org/top-ups", {"credits": "1000", "purchase_reference": "mine"}),
        post(console_inference, key, "/keys", {"user_id": org.other, "name": "sneaky"}),
        post(console_inference, key, "/alerts/webhook", {"url": "http://127.0.0.1:1/x", "secret": "s" * 20}),
        post(console_inference, key, "/alerts/thresholds", {"kind": "absolute", "value": "1"}),
        delete(console_inference, key, "/alerts/thresholds/1"),
        get(console_inference, key, "/usage/records", user_id=org.other),
        get(console_inference, key, "/usage/summary", user_id=org.other),
        get(console_inference, key, "/usage/export.csv", user_id=org.owner),
        get(console_inference, key, "/audit"),
        get(console_inference, key, "/audit/export.csv"),
    ]
    assert [c.status_code for c in calls] == [403] * len(calls), [c.text for c in calls]
    assert all(c.json()["error"]["type"] == "permission_error" for c in calls)
    assert members(admin, org.org_id) == before
    assert admin.GetOrganization(admin_pb2.GetOrganizationRequest(org_id=org.org_id)).pool_total_millicredits \
        == 1_000_000
    other_keys = admin.ListApiKeys(admin_pb2.ListApiKeysRequest(user_id=org.other)).keys
    assert len(other_keys) == 1  # only the fixture's key
    # Another member's key cannot be revoked by a member either (it is not theirs to see).
    other_key_id = other_keys[0].key_id
    assert delete(console_inference, key, f"/keys/{other_key_id}").status_code == 404
    assert not admin.ListApiKeys(admin_pb2.ListApiKeysRequest(user_id=org.other)).keys[0].HasField("revoked_at")


def test_a_member_sees_only_their_own_usage_and_keys(console_inference, org: Org):
    mine = chat(console_inference, org.keys["member"], request_id=f"mine-{uuid.uuid4().hex[:8]}")
    theirs = chat(console_inference, org.keys["other"], request_id=f"theirs-{uuid.uuid4().hex[:8]}")
    records = get(console_inference, org.keys["member"], "/usage/records").json()["data"]
    assert [r["request_id"] for r in records] == [mine.headers["X-Request-Id"]]
    assert {r["user_id"] for r in records} == {org.member}
    summary = get(console_inference, org.keys["member"], "/usage/summary").json()
    assert [g["key"] for g in summary["by_user"]] == [org.member]
    assert summary["total_requests"] == 1
    # Naming themselves is fine.
    assert get(console_inference, org.keys["member"], "/usage/records", user_id=org.member).status_code == 200
    keys = get(console_inference, org.keys["member"], "/keys").json()["data"]
    assert {k["user_id"] for k in keys} == {org.member}

    # The admin sees both members, and can narrow to one.
    records = get(console_inference, org.keys["owner"], "/usage/records").json()["data"]
    assert {r["request_id"] for r in records} >= {mine.headers["X-Request-Id"], theirs.headers["X-Request-Id"]}
    one = get(console_inference, org.keys["owner"], "/usage/records", user_id=org.other).json()["data"]
    assert [r["request_id"] for r in one] == [theirs.headers["X-Request-Id"]]
    outsider = get(console_inference, org.keys["owner"], "/usage/records", user_id="someone-else")
    assert outsider.status_code == 403


def test_admin_sees_the_pool_and_sets_allocations_with_clear_errors(console_inference, org: Org, admin):
    view = get(console_inference, org.keys["owner"], "/org").json()
    assert view["org"]["org_id"] == org.org_id, "the pool shown is the caller's own organization's"
    o = view["org"]
    assert (o["pool_total"], o["allocated"], o["unallocated"], o["used"], o["held"]) == \
        ("1000.000", "450.000", "550.000", "0.000", "0.000")
    rows = {m["user_id"]: m for m in view["members"]}
    assert set(rows) == {org.owner, org.admin_user, org.member, org.other}
    assert (rows[org.member]["allocation"], rows[org.member]["remaining"]) == ("100.000", "100.000")

    changed = post(console_inference, org.keys["admin"], "/org/allocations",
                   {"user_id": org.member, "allocation": "250.5"})
    assert changed.status_code == 200, changed.text
    assert changed.json()["allocation_millicredits"] == 250_500
    assert members(admin, org.org_id)[org.member].allocation_millicredits == 250_500

    too_much = post(console_inference, org.keys["owner"], "/org/allocations",
                    {"user_id": org.member, "allocation": "900"})
    assert too_much.status_code == 402
    error = too_much.json()["error"]
    assert error["code"] == "insufficient_unallocated_credits"
    assert "only 399.500 are unallocated" in error["message"] and "649.500 more" in error["message"]

    chat(console_inference, org.keys["other"])
    used = members(admin, org.org_id)[org.other].used_millicredits
    below = post(console_inference, org.keys["owner"], "/org/allocations", {"user_id": org.other, "allocation": "0"})
    assert below.status_code == 409 and "already used or holds" in below.json()["error"]["message"]
    assert used > 0

    for bad in ("-1", "1.2345", "abc", "", True, None, "1e3"):
        response = post(console_inference, org.keys["owner"], "/org/allocations",
                        {"user_id": org.member, "allocation": bad})
        assert response.status_code == 400, (bad, response.text)
    stranger = post(console_inference, org.keys["owner"], "/org/allocations", {"user_id": "nobody", "allocation": "1"})
    assert stranger.status_code == 404
    assert members(admin, org.org_id)[org.member].allocation_millicredits == 250_500


def test_the_console_cannot_top_up_the_pool_credits_are_bought_or_granted(console_inference, org: Org, admin):
    """Even an owner gets 403 with an OpenAI-style body: credits are bought through checkout or granted by an
    operator; the REST service's token has no mint role. Nothing is written, whatever the body."""
    before = admin.GetOrganization(admin_pb2.GetOrganizationRequest(org_id=org.org_id)).pool_total_millicredits
    for key in (org.keys["owner"], org.keys["admin"]):
        for body in ({"credits": "500", "purchase_reference": f"INV-{uuid.uuid4().hex[:8]}",
                      "purchase_amount": "5.00", "purchase_currency": "USD"}, {}, {"credits": "-1"}):
            response = post(console_inference, key, "/org/top-ups", body)
            assert response.status_code == 403, response.text
            error = response.json()["error"]
            assert (error["type"], error["code"]) == ("permission_error", "credits_not_created_here")
            assert "checkout" in error["message"] and "operator" in error["message"]
    assert admin.GetOrganization(admin_pb2.GetOrganizationRequest(org_id=org.org_id)).pool_total_millicredits \
        == before == 1_000_000


def test_admin_creates_and_revokes_member_keys(console_inference, org: Org, admin):
    created = post(console_inference, org.keys["admin"], "/keys", {"user_id": org.member, "name": "ci runner"})
    assert created.status_code == 200, created.text
    key = created.json()
    assert (key["user_id"], key["org_id"], key["name"], key["active"]) == (org.member, org.org_id, "ci runner", True)
    secret = key["secret"]
    assert chat(console_inference, secret).status_code == 200
    listed = get(console_inference, org.keys["owner"], "/keys").json()["data"]
    assert key["key_id"] in {k["key_id"] for k in listed} and all("secret" not in k for k in listed)
    assert get(console_inference, org.keys["member"], "/keys").json()["data"][0]["key_id"] == key["key_id"]

    revoked = delete(console_inference, org.keys["owner"], f"/keys/{key['key_id']}")
    assert revoked.status_code == 200 and revoked.json()["active"] is False
    time.sleep(0.7)  # the inference service caches key checks for 0.5 s in tests
    response = httpx.post(f"{console_inference.base_url}/chat/completions", headers=auth(secret), timeout=30,
                          json={"model": "up-chat", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 401

    # A member may create and revoke their own keys, bound to the org.
    own = post(console_inference, org.keys["member"], "/keys", {"name": "mine"}).json()
    assert (own["user_id"], own["org_id"]) == (org.member, org.org_id)
    assert delete(console_inference, org.keys["member"], f"/keys/{own['key_id']}").status_code == 200
    assert delete(console_inference, org.keys["owner"], "/keys/not-a-key").status_code == 400
    assert delete(console_inference, org.keys["owner"], "/keys/ck_0123456789abcdef").status_code == 404
    assert post(console_inference, org.keys["owner"], "/keys", {"user_id": "stranger"}).status_code == 404


def test_usage_summary_records_and_csv_over_a_range(console_inference, org: Org):
    ids = [f"csv-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    chat(console_inference, org.keys["member"], request_id=ids[0])
    chat(console_inference, org.keys["other"], request_id=ids[1])
    chat(console_inference, org.keys["other"], request_id=ids[2], model="demo-chat")
    key = org.keys["owner"]
    summary = get(console_inference, key, "/usage/summary").json()
    assert summary["total_requests"] == 3
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert [g["key"] for g in summary["by_day"]] == [today]
    assert {g["key"]: g["requests"] for g in summary["by_model"]} == {"up-chat": 2, "demo-chat": 1}
    assert {g["key"]: g["requests"] for g in summary["by_user"]} == {org.member: 1, org.other: 2}
    assert [g["key"] for g in summary["by_service_type"]] == ["llm_inference"]
    total = sum(g["credits_millicredits"] for g in summary["by_model"])
    assert summary["total_millicredits"] == total > 0

    records = get(console_inference, key, "/usage/records").json()["data"]
    assert [r["request_id"] for r in records] == ids[::-1]
    first = records[-1]
    assert first["metadata"]["prompt_tokens"] > 0 and first["metadata"]["provider"]
    assert first["model"] == "up-chat" and first["user_id"] == org.member

    export = get(console_inference, key, "/usage/export.csv")
    assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv")
    assert "attachment" in export.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert [r["request_id"] for r in rows] == [r["request_id"] for r in records]
    assert [int(r["millicredits"]) for r in rows] == [r["credits_millicredits"] for r in records]
    assert rows[-1]["prompt_tokens"] == str(first["metadata"]["prompt_tokens"])

    # A range that ends before the calls: nothing.
    empty = get(console_inference, key, "/usage/summary", end="2020-01-01T00:00:00Z").json()
    assert empty["total_requests"] == 0 and empty["by_day"] == []
    assert get(console_inference, key, "/usage/summary", start="2030-01-02", end="2030-01-01").status_code == 400
    assert get(console_inference, key, "/usage/records", limit=0).status_code == 400


def test_alerts_through_the_console(console_inference, org: Org, receiver, admin):
    key = org.keys["owner"]
    assert post(console_inference, key, "/alerts/webhook", {"url": receiver.url, "secret": "short"}).status_code == 400
    assert post(console_inference, key, "/alerts/webhook", {"url": "file:///etc/passwd",
                                                             "secret": "s" * 20}).status_code == 400
    secret = "console-secret-0123456789"
    saved = post(console_inference, key, "/alerts/webhook", {"url": receiver.url, "secret": secret})
    assert saved.status_code == 200 and saved.json() == {**saved.json(), "url": receiver.url, "has_secret": True}
    created = post(console_inference, key, "/alerts/thresholds",
                   {"user_id": org.member, "kind": "absolute", "value": "99.999"})
    assert created.status_code == 200, created.text
    assert created.json()["state"] == "armed" and created.json()["threshold_millicredits"] == 99_999
    pool = post(console_inference, key, "/alerts/thresholds", {"kind": "percent", "value": 10}).json()
    assert (pool["scope"], pool["threshold"]) == ("pool", "100.000")
    for bad in ({"kind": "percent", "value": 101}, {"kind": "percent", "value": "5.5"}, {"kind": "other", "value": 1},
                {"kind": "absolute", "value": "-3"}):
        assert post(console_inference, key, "/alerts/thresholds", bad).status_code == 400, bad

    chat(console_inference, org.keys["member"])  # a few millicredits: 100 → ~99.997 remaining, crosses 99.999
    [call] = receiver.wait_for(1)
    from credit_service.jobs.alert_delivery import verify_signature

    assert verify_signature(secret, call.body, call.headers["x-credit-signature"])
    deadline = time.monotonic() + 15
    while True:
        alerts = get(console_inference, key, "/alerts").json()
        if alerts["events"] and alerts["events"][0]["status"] == "delivered":
            break
        assert time.monotonic() < deadline, alerts
        time.sleep(0.2)
    assert alerts["webhook"]["url"] == receiver.url and "secret" not in alerts["webhook"]
    assert {t["threshold_id"]: t["state"] for t in alerts["thresholds"]}[created.json()["threshold_id"]] == "fired"
    event = alerts["events"][0]
    assert (event["scope"], event["user_id"], event["attempts"]) == ("allocation", org.member, 1)
    assert event["deliveries"][0]["status_code"] == 200

    # The member sees their own allocation's alert, not the pool's thresholds nor the webhook.
    mine = get(console_inference, org.keys["member"], "/alerts").json()
    assert mine["webhook"] is None
    assert [t["scope"] for t in mine["thresholds"]] == ["allocation"]
    assert [e["event_id"] for e in mine["events"]] == [event["event_id"]]
    assert get(console_inference, org.keys["other"], "/alerts").json()["events"] == []

    removed = delete(console_inference, key, f"/alerts/thresholds/{pool['threshold_id']}")
    assert removed.status_code == 200
    assert delete(console_inference, key, f"/alerts/thresholds/{pool['threshold_id']}").status_code == 404


def test_the_console_is_served_from_this_origin_only(console_inference):
    root = httpx.get(f"{console_inference.url}/console", follow_redirects=False)
    assert root.status_code in (307, 308) and root.headers["location"] == "/console/"
    page = httpx.get(f"{console_inference.url}/console/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'self'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    own = sorted(p for p in STATIC_DIR.iterdir() if p.suffix in (".html", ".js", ".css"))
    assert {"console.js", "keys.js", "alerts.js", "payments.js", "reports.js", "limits.js"} <= {p.name for p in own}
    for name in (*(p.name for p in own), "vendor/chart.umd.min.js"):
        response = httpx.get(f"{console_inference.url}/console/{name}")
        assert response.status_code == 200, name
    for path in ("/console/../pyproject.toml", "/console/%2e%2e/app.py", "/console/nope.js",
                 "/console/..%2fconsole.py"):
        assert httpx.get(f"{console_inference.url}{path}").status_code == 404, path
    # The page's own files refer to no other origin (charts are vendored, not from a CDN).
    for path in own:
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", path.read_text()), path
        assert "http://" not in path.read_text().replace("https://example.com", "")
    vendored = STATIC_DIR / "vendor" / "chart.umd.min.js"
    readme = (STATIC_DIR / "vendor" / "README.md").read_text()
    assert hashlib.sha256(vendored.read_bytes()).hexdigest() in readme
    assert "| 4.6.1 |" in readme and "MIT" in readme
    # The console's endpoints are in the OpenAPI document, its files are not.
    paths = httpx.get(f"{console_inference.url}/openapi.json").json()["paths"]
    assert f"{API}/org/allocations" in paths and not any(p.startswith("/console") for p in paths)


@pytest.mark.parametrize("kind", ["owner", "member"])
def test_balance_in_me_follows_spending(console_inference, org: Org, kind, spend):
    user = org.owner if kind == "owner" else org.member
    hold = spend.Reserve(authority_pb2.ReserveRequest(request_id=uuid.uuid4().hex, user_id=user, org_id=org.org_id,
                                                      amount_millicredits=1_500, service_type="llm_inference",
                                                      service_name="x"))
    balance = get(console_inference, org.keys[kind], "/me").json()["balance"]
    assert balance["held"] == "1.500"
    spend.Release(authority_pb2.ReleaseRequest(reservation_id=hold.reservation_id))


def test_a_console_whose_token_lacks_the_admin_role_says_so(console_authority, tokens, models_file, org: Org):
    """The authority's ROLE_REQUIRED reason (not its message) tells the console what is wrong."""
    from rest_support import InferenceProcess

    spend_only = InferenceProcess(console_authority, tokens.spend, models_file).start()  # spend+read
    try:
        refused = post(spend_only, org.keys["owner"], "/org/allocations", {"user_id": org.member, "allocation": "1"})
    finally:
        spend_only.stop()
    assert refused.status_code == 403, refused.text
    assert "lacks the admin role" in refused.json()["error"]["message"]


def test_a_stray_slash_is_404_never_a_redirect_to_another_route(console_inference, org: Org):
    """DELETE /keys/ once answered 307 to GET-only /keys (a client following it would call another route)."""
    for method, path in (("DELETE", "/keys/"), ("GET", "/keys/"), ("GET", "/org/")):
        response = httpx.request(method, f"{console_inference.url}{API}{path}", headers=auth(org.keys["owner"]),
                                 follow_redirects=False, timeout=30)
        assert response.status_code == 404, (method, path, response.status_code)
