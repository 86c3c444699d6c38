"""The Audit view in a real browser (Debian's headless Chromium, Playwright) against the real inference
service and authority: an owner changes a member's allocation from the members table, opens Audit and sees
the change with who made it (the service's token, for them, from their address) and the allocation before →
after; choosing their name filters the log to their changes. An operator (CONSOLE_OPERATORS) with no org of
their own sees every organization's records."""

from __future__ import annotations

from credit.v1 import admin_pb2

from .conftest import Org
from .test_audit_console import operated  # noqa: F401 - a fixture: a REST service with one console operator
from .test_browser import Tab, browser  # noqa: F401 - browser is a fixture (and skips without Chromium)


def test_an_owner_sees_their_change_in_the_audit_view(browser, artifacts, console_inference,  # noqa: F811
                                                      org: Org, admin, world):
    shots = artifacts / "audit"
    shots.mkdir(parents=True, exist_ok=True)
    world.allocate(org.org_id, org.other, 60_000)  # an operator's change, made without the console
    tab = Tab(browser, console_inference.url, shots)
    page = tab.page
    tab.sign_in(org.keys["owner"])
    key_id = org.keys["owner"].split(".")[0]
    field = page.locator(f"#alloc-{org.member}")
    field.fill("150")
    field.press("Enter")
    page.wait_for_selector("#status:has-text('Allocation of')")

    page.click("nav a[href='#audit']")
    row = "#audit-table tbody tr[data-action='SetAllocation']"
    tab.wait_until(f"document.querySelector(\"{row} .on-behalf-of\")")
    newest = page.locator(row).first
    assert newest.locator(".actor").inner_text() == "console"
    assert newest.locator(".on-behalf-of").inner_text() == f"user:{org.owner} (api_key {key_id})"
    assert newest.locator(".forwarded-for").inner_text().strip() == "from 127.0.0.1"
    assert newest.locator("td:nth-child(4)").inner_text() == f"member {org.member}"
    change = newest.locator("li[data-field='allocation_mc']")
    assert (change.locator(".before").inner_text(), change.locator(".after").inner_text()) == ("100000", "150000")
    assert page.locator(row).count() >= 2  # the operator's too (on behalf of nobody: no name to choose)
    page.locator("#audit").scroll_into_view_if_needed()
    tab.shot("01-audit-view")

    newest.locator(".on-behalf-of").click()  # only this person's changes
    tab.wait_until("document.querySelectorAll('#audit-table tbody tr').length === 1")
    assert page.locator("#audit-table tbody tr").get_attribute("data-action") == "SetAllocation"
    assert page.input_value("#audit-form input[name=actor]") == f"user:{org.owner} (api_key {key_id})"
    tab.close()


def test_an_operator_without_an_org_sees_every_organizations_records(browser, artifacts,  # noqa: F811
                                                                     operated,  # noqa: F811
                                                                     admin, world):
    inference, operator_key = operated
    org = world.org(1_000)
    name = f"browser-{org}"
    admin.CreatePlatformCredential(admin_pb2.CreatePlatformCredentialRequest(name=name, org_ids=[org],
                                                                             roles=["spend"]))
    shots = artifacts / "audit"
    shots.mkdir(parents=True, exist_ok=True)
    tab = Tab(browser, inference.url, shots)
    page = tab.page
    tab.sign_in(operator_key)
    page.click("nav a[href='#audit']")
    box = page.locator("#audit-form input[name=all_orgs]")
    assert box.is_visible() and box.is_checked() and box.is_disabled()
    rows = "#audit-table tbody tr[data-action='CreatePlatformCredential']"
    tab.wait_until(f"[...document.querySelectorAll(\"{rows} td:nth-child(4)\")]"
                   f".some((td) => td.textContent === 'platform_credential {name}')")
    assert page.locator("#audit-table tbody tr[data-action='CreateOrganization']").count() >= 1
    tab.shot("02-operator-audit-view")
    tab.close()
