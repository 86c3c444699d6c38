"""Rate limits in a real browser (Debian's headless Chromium, Playwright), against the real inference service
and authority: an owner sets the organization's and a member's limits from the form, sees a bad value
refused and clears a scope; the member then signs in and sees their own limits and the organization's with
what is left now (one request in flight), and no form to change them."""

from __future__ import annotations

from helpers import reserve_request

from credit.v1 import admin_pb2, authority_pb2

from .conftest import Org
from .test_browser import Tab, browser  # noqa: F401 - browser is a fixture (and skips without Chromium)


def limit_row(member: str) -> str:
    return f"#limits-table tr[data-scope='member'][data-who='{member}']"


def test_an_owner_sets_a_members_limits_and_the_member_sees_them(browser, artifacts,  # noqa: F811
                                                                   console_inference, org: Org, admin, spend):
    shots = artifacts / "limits"
    shots.mkdir(parents=True, exist_ok=True)
    tab = Tab(browser, console_inference.url, shots)
    page = tab.page
    tab.sign_in(org.keys["owner"])
    page.click("nav a[href='#limits']")
    tab.wait_until("document.querySelector('#limits-summary').textContent !== ''")
    assert page.inner_text("#limits-summary").startswith("No rate limits")

    form = "#limit-form"
    page.select_option(f"{form} select[name=user_id]", org.member)
    page.fill(f"{form} input[name=requests_per_minute]", "2")
    page.fill(f"{form} input[name=max_parallel]", "3")
    page.fill(f"{form} input[name=credits_per_day]", "5")
    page.click(f"{form} button[type=submit]")
    page.wait_for_selector(limit_row(org.member))
    assert page.inner_text(f"{limit_row(org.member)} .rpm") == "2 · 2 left"
    assert page.inner_text(f"{limit_row(org.member)} .day") == "5.000 · 0.000 used"
    assert page.inner_text(f"{limit_row(org.member)} .tpm") == "—"
    row = {r.user_id: r for r in admin.ListRateLimits(admin_pb2.ListRateLimitsRequest(org_id=org.org_id)).limits}
    assert (row[org.member].requests_per_minute, row[org.member].max_parallel,
            row[org.member].credits_per_day_millicredits) == (2, 3, 5_000)

    # The organization's limits: no credit ceilings there (those fields are off), and a bad value says why.
    page.select_option(f"{form} select[name=user_id]", "")
    assert page.is_disabled(f"{form} input[name=credits_per_day]")
    page.fill(f"{form} input[name=requests_per_minute]", "lots")
    page.click(f"{form} button[type=submit]")
    page.wait_for_selector("#error:not(:empty)")
    assert "requests_per_minute must be a whole number" in page.inner_text("#error")
    page.fill(f"{form} input[name=requests_per_minute]", "40")
    page.fill(f"{form} input[name=tokens_per_minute]", "90000")
    page.click(f"{form} button[type=submit]")
    page.wait_for_selector("#limits-table tr[data-scope='org']")
    assert page.inner_text("#limits-table tr[data-scope='org'] .rpm") == "40 · 40 left"

    # Another member's limits, cleared again from the table.
    page.select_option(f"{form} select[name=user_id]", org.other)
    page.fill(f"{form} input[name=max_parallel]", "1")
    page.click(f"{form} button[type=submit]")
    page.wait_for_selector(limit_row(org.other))
    page.locator("#limits").scroll_into_view_if_needed()
    tab.shot("01-owner-sets-limits")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click(f"{limit_row(org.other)} button.danger")
    tab.wait_until(f"!document.querySelector(\"{limit_row(org.other)}\")")
    tab.close(provoked=[(400, "POST", "/api/v1/console/limits")])

    hold = spend.Reserve(reserve_request(org.member, 1_250, org.org_id))
    tab = Tab(browser, console_inference.url, shots)
    page = tab.page
    tab.sign_in(org.keys["member"])
    page.click("nav a[href='#limits']")
    page.wait_for_selector(limit_row(org.member))
    scopes = page.eval_on_selector_all("#limits-table tbody tr", "rows => rows.map(r => r.dataset.scope)")
    assert scopes == ["org", "member"]
    assert page.inner_text(f"{limit_row(org.member)} th") == f"{org.member} (you)"
    assert page.inner_text(f"{limit_row(org.member)} .rpm") == "2 · 1 left"
    assert page.inner_text(f"{limit_row(org.member)} .parallel") == "3 · 1 open"
    assert page.inner_text(f"{limit_row(org.member)} .day") == "5.000 · 1.250 used"
    assert page.inner_text("#limits-table tr[data-scope='org'] .rpm") == "40 · 39 left"
    assert page.inner_text("#limits-summary").startswith("The organization's limits and yours")
    assert not page.is_visible("#limit-form") and not page.is_visible("#limits-table button.danger")
    page.locator("#limits").scroll_into_view_if_needed()
    tab.shot("02-member-sees-limits")
    tab.close()
    spend.Release(authority_pb2.ReleaseRequest(reservation_id=hold.reservation_id, reason="done"))
