"""The console in a real browser: Debian's headless Chromium driven by Playwright
against the real inference service, authority and PostgreSQL.

Screenshots and the exported CSV are saved under tests/artifacts/console/.
`make test` installs /usr/bin/chromium when it is missing; without it these
tests are skipped, except in CI (CI set), where that is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from collections.abc import Collection
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from credit.v1 import admin_pb2

from .conftest import Org, chat

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing in CI: `make test` should have installed Debian's chromium")
    pytest.skip(f"{CHROMIUM} not installed (`make chromium` installs it)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def shots(artifacts) -> Path:
    folder = artifacts / "console"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    print(f"\nconsole screenshots and CSV: {folder}")
    return folder


FAILED_LOAD = re.compile(r"Failed to load resource: the server responded with a status of (\d{3}) ")
# Requests the browser makes by itself (not the page, so not in Tab.refused): the console has no icon.
BROWSER_OWN = [(404, "GET", "/favicon.ico")]


def _path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


class Tab:
    """A page of the console, with what it logged and where it went."""

    def __init__(self, browser, base_url: str, shots: Path):
        self.context = browser.new_context(viewport={"width": 1366, "height": 900}, accept_downloads=True)
        self.page = self.context.new_page()
        self.page.set_default_timeout(15_000)
        self.base_url = base_url
        self.shots = shots
        self.errors: list[tuple[str, str]] = []  # (message, the URL it is about)
        self.refused: list[tuple[int, str, str]] = []  # (status, method, URL) of every 4xx/5xx answer
        self.foreign: list[str] = []
        self.page.on("console", lambda m: self.errors.append((m.text, m.location.get("url", "")))
                     if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append((str(e), "")))
        self.page.on("response", lambda r: self.refused.append((r.status, r.request.method, r.url))
                     if r.status >= 400 else None)
        self.page.on("request", lambda r: None if r.url.startswith((base_url, "blob:", "data:"))
                     else self.foreign.append(r.url))

    def wait_until(self, expression: str, timeout: float = 15) -> None:
        """Polls a JS expression from Python (page.wait_for_function evals in the page, which the CSP forbids)."""
        deadline = time.monotonic() + timeout
        while not self.page.evaluate(f"() => Boolean({expression})"):
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.05)

    def sign_in(self, key: str) -> None:
        page = self.page
        page.goto(f"{self.base_url}/console/")
        self.wait_until("document.activeElement && document.activeElement.id === 'api-key'")
        page.keyboard.type(key)  # keyboard only: the field has focus, Enter submits
        page.keyboard.press("Enter")
        page.wait_for_selector("#app:not([hidden])")
        self.wait_until("document.activeElement && document.activeElement.id === 'overview-title'")

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)

    def close(self, provoked: Collection[tuple[int, str, str]] = ()) -> None:
        """`provoked`: the (status, method, path?query) error answers the test provokes on purpose, each
        once. They, and nothing else, show up as failed resource loads; any other error fails the test."""
        self.context.close()
        answered = sorted((status, method, _path(url)) for status, method, url in self.refused)
        assert answered == sorted(provoked), f"error answers {answered}, provoked {sorted(provoked)}"
        expected = {(status, path) for status, _, path in [*provoked, *BROWSER_OWN]}
        unexpected = [(text, url) for text, url in self.errors
                      if not ((m := FAILED_LOAD.match(text)) and (int(m[1]), _path(url)) in expected)]
        assert not unexpected, f"browser errors: {unexpected}"
        assert not self.foreign, f"requests to other origins: {self.foreign}"


def members(admin, org_id: str) -> dict[str, admin_pb2.Member]:
    return {m.user_id: m for m in admin.ListMembers(admin_pb2.ListMembersRequest(org_id=org_id)).members}


def test_admin_manages_the_pool_sees_usage_exports_csv_and_alerts(browser, shots, console_inference, org: Org,
                                                                  admin, receiver):
    tab = Tab(browser, console_inference.url, shots)
    page = tab.page
    tab.sign_in(org.keys["owner"])
    assert org.owner in page.inner_text("#who") and "(owner)" in page.inner_text("#who")
    assert page.inner_text("#pool-total") == "1,000.000"
    assert page.inner_text("#pool-allocated") == "450.000"
    assert page.inner_text("#pool-unallocated") == "550.000"
    assert page.is_visible("#members-table")
    assert page.inner_text(f"#members-table tr[data-user='{org.member}'] td:nth-child(3)") == "100.000"
    assert page.evaluate("sessionStorage.getItem('creditConsole.apiKey')") == org.keys["owner"]
    tab.shot("01-admin-pool")

    # Change an allocation from the members table; the authority has it.
    field = page.locator(f"#alloc-{org.member}")
    field.fill("321.5")
    field.press("Enter")
    tab.wait_until(f"document.querySelector(\"#members-table tr[data-user='{org.member}'] td:nth-child(3)\")"
                           ".textContent === '321.500'")
    assert "Allocation of" in page.inner_text("#status")
    assert members(admin, org.org_id)[org.member].allocation_millicredits == 321_500
    assert page.inner_text("#pool-unallocated") == "328.500"

    # More than is unallocated: a clear error, nothing changed.
    field = page.locator(f"#alloc-{org.member}")
    field.fill("5000")
    field.press("Enter")
    page.wait_for_selector("#error:not(:empty)")
    assert "Not enough unallocated credits" in page.inner_text("#error")
    assert members(admin, org.org_id)[org.member].allocation_millicredits == 321_500
    tab.shot("02-admin-allocation-error")

    # A billed call shows in the usage table and the chart.
    request_id = f"browser-{uuid.uuid4().hex[:10]}"
    billed = chat(console_inference, org.keys["member"], request_id=request_id)
    page.click("#range-form button[type=submit]")
    page.wait_for_selector(f"#records-table tr[data-request-id='{request_id}']")
    row = page.inner_text(f"#records-table tr[data-request-id='{request_id}']")
    assert org.member in row and "up-chat" in row and billed.headers["X-Cost-Incurred"] in row
    today = time.strftime("%Y-%m-%d", time.gmtime())
    chart = page.evaluate("""() => { const c = window.consoleCharts.byDay;
        return {labels: c.data.labels, data: c.data.datasets[0].data}; }""")
    assert chart["labels"][-1] == today
    assert chart["data"][-1] == pytest.approx(float(billed.headers["X-Cost-Incurred"]))
    assert page.evaluate("window.consoleCharts.byModel.data.labels") == ["up-chat"]
    assert "up-chat" in page.inner_text("#by-model-table") and org.member in page.inner_text("#by-user-table")
    tab.shot("03-admin-usage")

    # CSV export of the same rows.
    with page.expect_download() as download:
        page.click("#export-csv")
    csv_path = shots / "usage-export.csv"
    download.value.save_as(csv_path)
    text = csv_path.read_text()
    assert text.splitlines()[0].startswith("created_at,request_id,")
    assert request_id in text and org.member in text

    # A key for a member, shown once.
    page.select_option("#key-form select[name=user_id]", org.member)
    page.fill("#key-form input[name=name]", "from the browser")
    expires = datetime.now() + timedelta(days=30)  # the browser's local time, sent as UTC
    page.fill("#key-form input[name=expires_at]", expires.strftime("%Y-%m-%dT%H:%M"))
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("#new-secret:not([hidden])")
    secret = page.inner_text("#new-secret-value")
    assert secret.startswith("ck_")
    row = f"#keys-table tr[data-key='{secret.split('.')[0]}']"
    page.wait_for_selector(row)  # the list reloaded with the new key, not used yet
    headers = page.locator("#keys-table thead th").all_inner_texts()
    assert headers[5:7] == ["Expires", "Last used"], headers
    cells = page.locator(f"{row} td").all_inner_texts()
    assert cells[5] != "never" and cells[6] == "never" and cells[7] == "active", cells
    assert chat(console_inference, secret).status_code == 200

    # Alerts: a webhook and a threshold from the console; a crossing shows up there.
    page.fill("#webhook-form input[name=url]", receiver.url)
    page.fill("#webhook-form input[name=secret]", "browser-secret-0123456789")
    page.click("#webhook-form button[type=submit]")
    tab.wait_until("document.querySelector('#webhook-current').textContent.includes('Alerts go to')")
    page.select_option("#threshold-form select[name=user_id]", org.other)
    page.select_option("#threshold-form select[name=kind]", "absolute")
    page.fill("#threshold-form input[name=value]", "49.999")
    page.click("#threshold-form button[type=submit]")
    page.wait_for_selector("#thresholds-table tr[data-threshold]")
    chat(console_inference, org.keys["other"])  # 50 → ~49.997: crosses
    receiver.wait_for(1)
    deadline = time.monotonic() + 15
    while True:
        page.reload()  # the key survives a reload (session storage): signed in again
        page.wait_for_selector("#app:not([hidden])")
        page.wait_for_selector("#events-table tbody tr")
        if "delivered" in page.inner_text("#events-table"):
            break
        assert time.monotonic() < deadline, page.inner_text("#events-table")
        time.sleep(0.3)
    assert "fired" in page.inner_text("#thresholds-table")
    page.locator("#alerts").scroll_into_view_if_needed()
    tab.shot("04-admin-alerts")

    # Signing out forgets the key.
    page.click("#sign-out")
    page.wait_for_selector("#signin:not([hidden])")
    assert page.evaluate("sessionStorage.getItem('creditConsole.apiKey')") is None
    tab.close(provoked=[(402, "POST", "/api/v1/console/org/allocations")])  # more than is unallocated


def test_a_member_sees_only_themselves(browser, shots, console_inference, org: Org, admin):
    theirs = f"other-{uuid.uuid4().hex[:10]}"
    mine = f"mine-{uuid.uuid4().hex[:10]}"
    chat(console_inference, org.keys["other"], request_id=theirs)
    chat(console_inference, org.keys["member"], request_id=mine)
    tab = Tab(browser, console_inference.url, shots)
    page = tab.page
    tab.sign_in(org.keys["member"])
    assert "(member)" in page.inner_text("#who")
    assert page.inner_text("#balance-limit") == "100.000"
    assert not page.is_visible("#org") and not page.is_visible("#members-table")
    assert not page.is_visible("#threshold-form") and not page.is_visible("#webhook-form")
    assert not page.is_visible("#range-form select[name=user_id]")
    page.wait_for_selector(f"#records-table tr[data-request-id='{mine}']")
    assert page.locator(f"#records-table tr[data-request-id='{theirs}']").count() == 0
    assert org.other not in page.inner_text("#usage") and org.owner not in page.inner_text("#usage")
    assert page.inner_text("#by-user-table tbody").split()[0] == org.member
    keys = page.locator("#keys-table tbody tr")
    assert keys.count() == 1 and org.member in keys.inner_text()
    tab.shot("05-member")

    # The page's own key cannot reach the admin API either.
    statuses = page.evaluate("""async (who) => {
        const headers = {Authorization: 'Bearer ' + sessionStorage.getItem('creditConsole.apiKey'),
                         'Content-Type': 'application/json'};
        const org = await fetch('/api/v1/console/org', {headers});
        const set = await fetch('/api/v1/console/org/allocations', {method: 'POST', headers,
            body: JSON.stringify({user_id: who, allocation: '999'})});
        const usage = await fetch('/api/v1/console/usage/records?user_id=' + who, {headers});
        return [org.status, set.status, usage.status]; }""", org.other)
    assert statuses == [403, 403, 403]
    assert members(admin, org.org_id)[org.other].allocation_millicredits == 50_000
    tab.close(provoked=[(403, "GET", "/api/v1/console/org"), (403, "POST", "/api/v1/console/org/allocations"),
                        (403, "GET", f"/api/v1/console/usage/records?user_id={org.other}")])


def test_keyboard_only_navigation(browser, shots, console_inference, org: Org):
    tab = Tab(browser, console_inference.url, shots)
    page = tab.page
    page.goto(f"{console_inference.url}/console/")
    tab.wait_until("document.activeElement && document.activeElement.id === 'api-key'")
    page.keyboard.press("Shift+Tab")  # the skip link comes first, right before the key field
    assert page.evaluate("document.activeElement.className") == "skip-link"
    assert page.is_visible(".skip-link")
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    tab.sign_in(org.keys["admin"])
    describe = ("(() => { const e = document.activeElement; "
                "return e.id || e.getAttribute('href') || e.name || e.textContent.trim(); })()")
    forward = []
    for _ in range(8):
        page.keyboard.press("Tab")
        forward.append(page.evaluate(describe))
    assert any(f.startswith("alloc-") for f in forward), forward  # the members' allocation fields are reachable
    page.focus("#overview-title")  # where sign-in put the focus; from there backwards to the section links
    backward = []
    for _ in range(10):
        page.keyboard.press("Shift+Tab")
        backward.append(page.evaluate(describe))
    assert backward[:9] == ["#audit", "#alerts", "#limits", "#keys", "#forecast", "#statement", "#usage", "#org",
                            "#overview"], backward
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")  # on "Usage"
    assert page.evaluate(describe) == "#usage"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"
    tab.close()
