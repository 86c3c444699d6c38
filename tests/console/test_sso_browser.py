"""The console's sign-in through an identity provider in a real browser: Debian's Chromium driven by
Playwright, the real provider (tests/oidc/provider.js), the real REST service, authority and PostgreSQL.

The provider is on `localhost`, the console on 127.0.0.1: another site, as in production, so the
way back from the provider is a cross-site navigation that must carry the SameSite=Lax session
cookie. Screenshots go to tests/artifacts/console-sso/.
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

import pytest
from oidc.harness import AUDIENCE, OTHER_AUDIENCE, SHORT_CLIENT_ID, OidcProvider

from credit.v1 import authority_pb2

from .conftest import Org
from .test_browser import browser  # noqa: F401 - browser is a fixture (and skips without Chromium)

LOCAL = re.compile(r"^https?://(127\.0\.0\.1|localhost)[:/]")


@pytest.fixture(scope="module")
def shots(artifacts) -> Path:
    folder = artifacts / "console-sso"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def page(browser):  # noqa: F811 - the fixture imported above
    """A fresh browser profile; requests off this machine (the provider's page fonts) are refused."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.route(lambda url: not LOCAL.match(url), lambda route: route.abort())
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    yield tab
    context.close()


def sign_in_at_provider(page, provider: OidcProvider, console_url: str, login: str) -> None:
    page.goto(f"{console_url}/console/")
    link = page.locator("#sso-sign-in")
    link.wait_for()
    assert link.inner_text() == "Sign in with Test IdP"
    link.click()
    page.wait_for_url(f"{provider.issuer}/interaction/**", wait_until="domcontentloaded")
    page.fill("input[name=login]", login)
    page.fill("input[name=password]", "any password")
    page.click("button[type=submit]")
    page.wait_for_url(f"{console_url}/console/**", wait_until="domcontentloaded")


def fetch_status(page, path: str, token: str | None = None) -> list:
    return page.evaluate("""async ([path, token]) => {
        const response = await fetch(path, token ? {headers: {Authorization: 'Bearer ' + token}} : {});
        return [response.status, await response.json()]; }""", [path, token])


def test_sign_in_and_out_through_the_provider(page, sso, org: Org, shots):
    provider, strict, _ = sso
    sign_in_at_provider(page, provider, strict.url, org.owner)
    page.wait_for_selector("#app:not([hidden])")
    assert org.owner in page.inner_text("#who") and "(owner)" in page.inner_text("#who")
    page.wait_for_selector("#pool-total")
    assert page.inner_text("#pool-total") == "1,000.000"  # the authority's role and pool, not the provider's
    assert page.evaluate("sessionStorage.getItem('creditConsole.apiKey')") is None
    cookie = next(c for c in page.context.cookies(strict.url) if c["name"] == "credit_console_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert page.evaluate("document.cookie").find("credit_console_session") == -1  # script cannot read it
    page.screenshot(path=str(shots / "01-signed-in-with-provider.png"), full_page=True)

    # Sign-out ends the console's session, then the provider's (its end_session_endpoint), and comes back.
    page.click("#sign-out")
    page.wait_for_url(f"{provider.issuer}/session/end**", wait_until="domcontentloaded")
    page.click("button[value=yes]")
    page.wait_for_url(f"{strict.url}/console/**", wait_until="domcontentloaded")
    page.wait_for_selector("#sso:not([hidden])")
    assert page.is_hidden("#app") and page.is_visible("#signin")
    assert fetch_status(page, "/api/v1/console/sso")[1]["signed_in"] is False
    assert fetch_status(page, "/api/v1/console/me")[0] == 401
    page.screenshot(path=str(shots / "02-signed-out.png"), full_page=True)
    # The provider's session ended too: signing in again asks for a login.
    page.click("#sso-sign-in")
    page.wait_for_url(f"{provider.issuer}/interaction/**", wait_until="domcontentloaded")
    assert page.is_visible("input[name=login]")


def test_a_new_user_is_created_on_first_sign_in_when_allowed(page, sso, spend, shots):
    provider, _, open_ = sso
    newcomer = f"browser-new-{uuid.uuid4().hex[:8]}"
    sign_in_at_provider(page, provider, open_.url, newcomer)
    page.wait_for_selector("#app:not([hidden])")
    assert page.inner_text("#who") == f"Signed in as {newcomer} · individual account"
    assert page.inner_text("#balance-available") == "0.000"
    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=newcomer))
    assert (balance.limit_millicredits, balance.used_millicredits) == (0, 0)
    page.screenshot(path=str(shots / "03-auto-created.png"), full_page=True)


def test_an_unknown_user_is_refused_and_bad_tokens_too(page, sso, org: Org, spend):
    provider, strict, _ = sso
    stranger = f"browser-stranger-{uuid.uuid4().hex[:8]}"
    sign_in_at_provider(page, provider, strict.url, stranger)
    page.wait_for_selector("#error:not(:empty)")
    assert f"'{stranger}' is not a user of the credit authority" in page.inner_text("#error")
    assert page.is_hidden("#app") and page.is_visible("#sso-sign-in")
    with pytest.raises(Exception, match="not found"):
        spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=stranger))

    # Bearer tokens sent from this page: the good one passes, the bad ones are 401 in OpenAI's body.
    good = provider.access_token(org.member)
    header, payload, signature = good.split(".")
    tampered = f"{header}.{payload}.{signature[:-6]}{'AAAAAA' if not signature.endswith('AAAAAA') else 'BBBBBB'}"
    expired = provider.access_token(org.member, client_id=SHORT_CLIENT_ID)
    other = provider.access_token(org.member, resource=OTHER_AUDIENCE)
    assert fetch_status(page, "/api/v1/console/me", good)[1]["user_id"] == org.member
    page.wait_for_timeout(1500)  # the short-lived token expires
    for token, why in ((expired, "expired"), (other, f"another audience (this service accepts '{AUDIENCE}')"),
                       (tampered, "signature does not verify")):
        status, body = fetch_status(page, "/api/v1/console/me", token)
        assert status == 401 and body["error"]["code"] == "invalid_access_token" and why in body["error"]["message"]


def test_api_key_sign_in_stays_for_local_use(page, sso, org: Org):
    _, strict, _ = sso
    page.goto(f"{strict.url}/console/")
    page.wait_for_selector("#sso:not([hidden])")
    page.fill("#api-key", org.keys["member"])
    page.press("#api-key", "Enter")
    page.wait_for_selector("#app:not([hidden])")
    assert "(member)" in page.inner_text("#who")
    assert page.evaluate("sessionStorage.getItem('creditConsole.apiKey')") == org.keys["member"]
    page.click("#sign-out")  # an API key's sign-out stays here: no provider involved
    page.wait_for_selector("#signin:not([hidden])")
    assert page.url.startswith(strict.url)
