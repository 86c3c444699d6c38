"""Buying credits in a real browser (Debian's headless Chromium, Playwright): the console's "Buy credits"
panel → the Stripe stand-in's checkout page → back to the console, where the purchase shows pending
until Stripe's (signed) webhook reaches the authority, then paid, with the pool grown. A deployment
without payments says so, and how an operator adds credits; a member sees no panel."""

from __future__ import annotations

from stripe_events import checkout_completed, sign

from credit.v1 import admin_pb2

from . import payments_fixtures
from .conftest import Org
from .payments_fixtures import WEBHOOK_SECRET
from .test_browser import Tab, browser  # noqa: F401 - browser is a fixture (and skips without Chromium)
from .test_payments_rest import deliver

stripe_standin = payments_fixtures.stripe_standin
payments_authority = payments_fixtures.payments_authority
payments_inference = payments_fixtures.payments_inference


def pool_total(admin, org_id: str) -> int:
    return admin.GetOrganization(admin_pb2.GetOrganizationRequest(org_id=org_id)).pool_total_millicredits


def status_of(tab: Tab, session_id: str) -> str:
    return tab.page.get_attribute(f"#purchases-table tr[data-session='{session_id}'] [data-status]", "data-status")


def test_an_owner_buys_credits_through_checkout(browser, artifacts, payments_inference, stripe_standin,  # noqa: F811
                                                org: Org, admin):
    shots = artifacts / "payments"
    shots.mkdir(parents=True, exist_ok=True)
    tab = Tab(browser, payments_inference.url, shots)
    page = tab.page
    tab.sign_in(org.keys["owner"])
    page.wait_for_selector("#buy-form:not([hidden])")
    assert page.inner_text("#buy-packs").split("\n")[0] == "1,000.000 credits · 10.00 USD"
    assert "100 credits per USD" in page.inner_text("#buy-price")
    before = pool_total(admin, org.org_id)

    # Out of bounds: a clear error, no session.
    created = len(stripe_standin.created())
    page.fill("#buy-form input[name=credits]", "50")
    page.click("#buy-form button[type=submit]")
    page.wait_for_selector("#error:not(:empty)")
    assert "from 500.000 to 100000.000" in page.inner_text("#error")
    assert len(stripe_standin.created()) == created

    page.fill("#buy-form input[name=credits]", "1500")
    tab.shot("01-buy-credits")
    page.click("#buy-form button[type=submit]")
    page.wait_for_url(f"{stripe_standin.url}/pay/*")
    session_id = page.inner_text("#session")
    assert page.inner_text("#amount") == "1500 usd (minor units)"  # 1,500 credits = 15.00 USD
    page.click("#pay")  # the stand-in "pays" and sends the browser back, as Stripe does

    page.wait_for_url(f"{payments_inference.url}/console/*")
    page.wait_for_selector(f"#purchases-table tr[data-session='{session_id}']")
    assert status_of(tab, session_id) == "pending"
    assert "Payment sent" in page.inner_text("#checkout-notice")
    assert "checkout=" not in page.url  # the page forgot the return parameters
    tab.shot("02-purchase-pending")
    assert pool_total(admin, org.org_id) == before

    payload = checkout_completed(stripe_standin.paid(session_id))
    assert deliver(payments_inference, payload, sign(payload, WEBHOOK_SECRET)).json()["outcome"] == "credited"
    tab.wait_until(f"document.querySelector(\"#purchases-table tr[data-session='{session_id}'] [data-status]\")"
                   ".dataset.status === 'paid'")
    tab.wait_until("document.querySelector('#checkout-notice').textContent.includes('Payment confirmed')")
    assert pool_total(admin, org.org_id) == before + 1_500_000
    total = f"{(before + 1_500_000) // 1000:,}.000"
    tab.wait_until(f"document.querySelector('#pool-total').textContent === '{total}'")
    tab.shot("03-purchase-paid")

    # Only the stand-in was reached outside this origin: its checkout page.
    assert tab.foreign and all(url.startswith(stripe_standin.url) for url in tab.foreign), tab.foreign
    tab.foreign.clear()
    tab.close(provoked=[(400, "POST", "/api/v1/console/org/checkout")])


def test_without_payments_the_console_says_how_credits_are_added(browser, artifacts, console_inference,  # noqa: F811
                                                                 org: Org):
    tab = Tab(browser, console_inference.url, artifacts / "payments")
    page = tab.page
    tab.sign_in(org.keys["admin"])
    page.wait_for_selector("#buy-off:not([hidden])")
    assert "Payments are not configured" in page.inner_text("#buy-off")
    assert "creditctl top-up" in page.inner_text("#buy-off")
    assert not page.is_visible("#buy-form") and not page.is_visible("#purchases-table")
    tab.close()


def test_a_member_sees_no_buy_panel(browser, artifacts, payments_inference, org: Org):  # noqa: F811
    tab = Tab(browser, payments_inference.url, artifacts / "payments")
    page = tab.page
    tab.sign_in(org.keys["member"])
    page.wait_for_selector("#keys-table tbody tr")  # the page has loaded what it shows a member
    assert not page.is_visible("#buy-form") and not page.is_visible("#buy-off")
    assert not page.is_visible("#purchases-table")
    tab.close()
