"""Sign-in through an identity provider, over HTTP: the provider's JWT access tokens as an alternative
to API keys on the REST API and the console's, and what the console's sign-in starts with.

The provider is real: panva/oidc-provider on Node.js (tests/oidc/provider.js), tokens got from it
through the authorization-code flow with PKCE. Two REST services use it: `strict` (unknown users are
refused) and `open` (OIDC_AUTO_CREATE_USERS: created on first sign-in). The browser flow is in
test_sso_browser.py.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from urllib.parse import parse_qs, urlsplit

import httpx
import openai
import pytest
from conftest import free_port
from joserfc import jwk, jwt
from oidc.harness import AUDIENCE, OTHER_AUDIENCE, SHORT_CLIENT_ID
from rest_support import InferenceProcess, sdk

from credit.v1 import admin_pb2, authority_pb2, types_pb2

from .conftest import Org, auth


def b64(part: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def encode(claims: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()


def refused(response: httpx.Response, why: str) -> None:
    """401 in OpenAI's error body, saying why."""
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("authentication_error", "invalid_access_token"), error
    assert why in error["message"], error["message"]
    assert response.headers["www-authenticate"].startswith("Bearer")


def chat(service: InferenceProcess, token: str) -> httpx.Response:
    return httpx.post(f"{service.base_url}/chat/completions", headers=auth(token), timeout=30,
                      json={"model": "up-chat", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5})


def test_an_access_token_bills_its_user_like_an_api_key(sso, org: Org, admin):
    provider, strict, _ = sso
    token = provider.access_token(org.member)
    before = admin.ListMembers(admin_pb2.ListMembersRequest(org_id=org.org_id)).members

    reply = sdk(strict, token).chat.completions.with_raw_response.create(
        model="up-chat", messages=[{"role": "user", "content": "Hello"}], max_tokens=10)
    assert reply.headers["x-funding-source"] == f"org:{org.org_id}"  # the normal rule for that user
    charged = reply.headers["x-cost-incurred"]
    after = {m.user_id: m for m in admin.ListMembers(admin_pb2.ListMembersRequest(org_id=org.org_id)).members}
    used = {m.user_id: m.used_millicredits for m in before}
    assert after[org.member].used_millicredits - used[org.member] == round(float(charged) * 1000) > 0

    # The console's API takes it too; membership and role are the authority's.
    me = httpx.get(f"{strict.url}/api/v1/console/me", headers=auth(token)).json()
    assert (me["user_id"], me["org_id"], me["role"], me["signed_in_with"]) == (
        org.member, org.org_id, "member", "access_token")
    owner = httpx.get(f"{strict.url}/api/v1/console/org", headers=auth(provider.access_token(org.owner)))
    assert owner.status_code == 200 and {m["user_id"] for m in owner.json()["members"]} >= {org.member}
    assert httpx.get(f"{strict.url}/api/v1/console/org", headers=auth(token)).status_code == 403

    # Idempotency-Key is scoped to the token's user, like to a key: the same id replays, nothing more charged.
    rid = f"sso-{uuid.uuid4().hex[:8]}"
    first = httpx.post(f"{strict.url}/api/v1/llm/chat/completions", headers={**auth(token), "Idempotency-Key": rid},
                       json={"model": "up-chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5})
    records = admin.QueryUsage(admin_pb2.QueryUsageRequest(org_id=org.org_id, user_id=org.member, limit=10)).records
    assert first.status_code == 200 and first.headers["x-request-id"] == rid
    assert [r.request_id.split(":", 1)[1] for r in records if r.request_id.endswith(f":{rid}")] == [rid]


def test_bad_tokens_are_refused_and_nothing_is_held(sso, org: Org, admin, spend):
    provider, strict, _ = sso
    good = provider.access_token(org.member)
    header, payload, signature = good.split(".")
    expired = provider.access_token(org.member, client_id=SHORT_CLIENT_ID)  # lives 1 second
    elsewhere = provider.access_token(org.member, resource=OTHER_AUDIENCE)
    assert b64(elsewhere.split(".")[1])["aud"] == OTHER_AUDIENCE and b64(payload)["aud"] == AUDIENCE
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    as_owner = encode({**b64(payload), "preferred_username": org.owner, "sub": org.owner})
    # Signed by a key the provider never published, under the provider's key id.
    forger = jwk.RSAKey.generate_key(2048, parameters={"kid": b64(header)["kid"]})
    forged = jwt.encode({"alg": "RS256", "kid": b64(header)["kid"]}, b64(payload), forger)
    unsigned = f"{encode({'alg': 'none', 'typ': 'JWT'})}.{payload}."
    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=org.member, org_id=org.org_id))
    time.sleep(1.5)  # the short-lived token expires

    cases = [(expired, "expired"), (elsewhere, "another audience"),
             (f"{header}.{payload}.{flipped}", "signature does not verify"),
             (f"{header}.{as_owner}.{signature}", "signature does not verify"),
             (forged, "signature does not verify"), (unsigned, "not a valid signed JWT")]
    for token, why in cases:
        refused(chat(strict, token), why)
        refused(httpx.get(f"{strict.url}/api/v1/console/me", headers=auth(token)), why)
        with pytest.raises(openai.AuthenticationError):
            sdk(strict, token).models.list()
    assert spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=org.member, org_id=org.org_id)) == balance
    assert chat(strict, good).status_code == 200  # the same service takes the good one


def test_a_user_the_authority_does_not_know(sso, admin, spend):
    provider, strict, open_ = sso
    newcomer = f"newcomer-{uuid.uuid4().hex[:8]}"

    refused(chat(strict, provider.access_token(newcomer)), "not a user of the credit authority")
    with pytest.raises(Exception) as unknown:
        spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=newcomer))
    assert "not found" in str(unknown.value)

    # Auto-create on: the user exists from the first call; funding follows the normal rule (no org, no
    # credits: 402, nothing held).
    token = provider.access_token(newcomer)
    poor = chat(open_, token)
    assert poor.status_code == 402 and poor.json()["error"]["code"] == "insufficient_credits"
    assert poor.json()["error"]["funding"] == "individual"
    me = httpx.get(f"{open_.url}/api/v1/console/me", headers=auth(token)).json()
    assert (me["user_id"], me["view"], me["balance"]["available"]) == (newcomer, "individual", "0.000")
    funding = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=newcomer)).funding
    assert funding.kind == types_pb2.Funding.INDIVIDUAL
    # The audit log's record of that creation names them, and the address they called from.
    created = admin.ListAuditRecords(admin_pb2.ListAuditRecordsRequest(action="CreateUser",
                                                                       actor=f"user:{newcomer} (access_token)"))
    assert [(r.target_id, r.actor, r.forwarded_for) for r in created.records] == [(newcomer, "console", "127.0.0.1")]
    # Once created, the strict service knows them too.
    assert chat(strict, token).status_code == 402


def test_the_sign_in_redirect_uses_pkce_and_a_signed_session_cookie(sso):
    provider, strict, _ = sso
    status = httpx.get(f"{strict.url}/api/v1/console/sso").json()
    assert status == {"enabled": True, "provider": "Test IdP", "login_url": "/auth/oidc/login",
                      "signed_in": False, "error": None}
    start = httpx.get(f"{strict.url}/auth/oidc/login", follow_redirects=False)
    assert start.status_code == 302
    target = urlsplit(start.headers["location"])
    query = {k: v[0] for k, v in parse_qs(target.query).items()}
    assert f"{target.scheme}://{target.netloc}{target.path}" == f"{provider.issuer}/auth"
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert query["response_type"] == "code" and query["state"] and query["nonce"]
    assert query["redirect_uri"] == f"{strict.url}/auth/oidc/callback"
    cookie = start.headers["set-cookie"].lower()
    assert cookie.startswith("credit_console_session=") and "httponly" in cookie and "samesite=lax" in cookie
    # A callback that does not come from this browser's sign-in signs nobody in.
    forged = httpx.get(f"{strict.url}/auth/oidc/callback?code=abc&state=xyz", follow_redirects=False)
    assert forged.status_code == 303 and forged.headers["location"] == "/console/"
    jar = httpx.Cookies({"credit_console_session": forged.cookies["credit_console_session"]})
    after = httpx.get(f"{strict.url}/api/v1/console/sso", cookies=jar).json()
    assert after["signed_in"] is False and "refused the sign-in" in after["error"]
    assert httpx.get(f"{strict.url}/api/v1/console/me", cookies=jar).status_code == 401
    # The session is for the console: the billed API never takes it.
    assert httpx.post(f"{strict.url}/api/v1/llm/chat/completions", cookies=jar,
                      json={"model": "up-chat", "messages": []}).status_code == 401


def test_without_sso_the_console_offers_api_keys_only(console_inference, org: Org):
    status = httpx.get(f"{console_inference.url}/api/v1/console/sso").json()
    assert status["enabled"] is False
    assert httpx.get(f"{console_inference.url}/auth/oidc/login").status_code == 404
    jwt_like = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
    response = httpx.get(f"{console_inference.url}/api/v1/console/me", headers=auth(jwt_like))
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{console_inference.url}/api/v1/console/me", headers=auth(org.keys["member"])).json()[
        "signed_in_with"] == "api_key"


def test_a_provider_that_cannot_be_reached_fails_closed(console_authority, console_tokens, models_file, org: Org):
    """Nothing to check a token with: 503 (like the authority being down), never a pass; API keys still work."""
    away = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    service = InferenceProcess(console_authority, console_tokens.console, models_file, {
        "OIDC_ISSUER": away, "OIDC_CLIENT_ID": "credit-console", "OIDC_CLIENT_SECRET": "x" * 24,
        "CONSOLE_SESSION_SECRET": "s" * 40}).start()
    try:
        token = f"{encode({'alg': 'RS256', 'kid': 'k'})}.{encode({'sub': org.member, 'aud': 'credit-console'})}.c2ln"
        down = chat(service, token)
        assert down.status_code == 503 and down.json()["error"]["type"] == "service_unavailable"
        assert httpx.get(f"{service.url}/auth/oidc/login").status_code == 503
        assert chat(service, org.keys["member"]).status_code == 200
    finally:
        service.stop()
