"""Statements and forecasts in a real browser (Debian's headless Chromium, Playwright), against the real
inference service and authority: an owner opens Statement, picks a period, sees the opening and closing
balance and the lines, downloads the CSV, looks at a member's allocation and at the Forecast's run-out
dates; a member sees only their own allocation."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import datetime, timedelta, timezone

from credit.v1 import admin_pb2

from .conftest import Org, chat
from .test_browser import Tab, browser  # noqa: F401 - browser is a fixture (and skips without Chromium)


def test_an_owner_reads_the_statement_downloads_it_and_sees_the_forecast(browser, artifacts,  # noqa: F811
                                                                          console_inference, org: Org, admin):
    shots = artifacts / "statement"
    shots.mkdir(parents=True, exist_ok=True)
    reference = f"=1+1 {uuid.uuid4().hex[:6]}"
    admin.TopUpPool(admin_pb2.TopUpPoolRequest(org_id=org.org_id, amount_millicredits=250_000,
                                               purchase_reference=reference))
    chat(console_inference, org.keys["member"])
    today = datetime.now(timezone.utc).date()
    start, end = (today - timedelta(days=3)).isoformat(), today.isoformat()

    tab = Tab(browser, console_inference.url, shots)
    page = tab.page
    tab.sign_in(org.keys["owner"])
    page.click("nav a[href='#statement']")
    page.fill("#statement-form input[name=start]", start)
    page.fill("#statement-form input[name=end]", end)
    page.click("#statement-form button[type=submit]")
    tab.wait_until(f"document.querySelector('#statement-account').textContent.includes('{start} to {end}')")
    assert page.inner_text("#statement-account").startswith(f"The pool of {org.org_id}")
    assert page.inner_text("#statement-opening") == "0.000"
    line = page.locator("#statement-table tr[data-kind='top_up']", has_text=reference)
    assert line.count() == 1 and "+250.000" in line.inner_text() and "operator" in line.inner_text()
    assert page.inner_text("#statement-credits-in") == "+1,250.000"
    used = admin.GetOrganization(admin_pb2.GetOrganizationRequest(org_id=org.org_id)).used_millicredits
    assert used > 0
    closing = 1_250_000 - used
    assert page.inner_text("#statement-closing") == f"{closing // 1000:,}.{closing % 1000:03d}"
    assert page.inner_text("#statement-row-closing td.num") == page.inner_text("#statement-closing")
    assert "up-chat" in page.inner_text("#statement-by-model") and org.member in page.inner_text("#statement-by-member")
    page.locator("#statement").scroll_into_view_if_needed()
    tab.shot("01-pool-statement")

    with page.expect_download() as download:
        page.click("#statement-csv")
    assert download.value.suggested_filename == f"statement-{org.org_id}-{start}-{end}.csv"
    saved = shots / "statement.csv"
    download.value.save_as(saved)
    rows = list(csv.reader(io.StringIO(saved.read_text())))
    assert rows[0][:3] == ["section", "at", "kind"]
    line_row = next(r for r in rows if r[0] == "credits_in" and r[8] == "'" + reference)  # escaped: = starts it
    assert (line_row[2], line_row[5], line_row[6]) == ("top_up", "250.000", "250000")

    # A member's allocation, from the account list the forecast filled in.
    page.select_option("#statement-form select[name=user_id]", org.member)
    page.click("#statement-form button[type=submit]")
    tab.wait_until("document.querySelector('#statement-account').textContent.includes(\"allocation\")")
    assert page.inner_text("#statement-account").startswith(f"{org.member}'s allocation in {org.org_id}")
    assert page.is_visible("#statement-allocation") and not page.is_visible("#statement-by-member")

    # An end before the start: a clear error, the last statement stays.
    page.fill("#statement-form input[name=start]", end)
    page.fill("#statement-form input[name=end]", start)
    page.click("#statement-form button[type=submit]")
    page.wait_for_selector("#error:not(:empty)")
    assert "end must be on or after start" in page.inner_text("#error")

    page.click("nav a[href='#forecast']")
    member_row = f"#forecast-table tr[data-account='{org.member}'] .runs-out"
    page.wait_for_selector(member_row)
    assert page.inner_text(member_row).startswith("at this rate, runs out on ")
    runs_out = page.get_attribute(member_row, "data-runs-out")
    assert page.inner_text(member_row) == f"at this rate, runs out on {runs_out[:10]}"
    assert page.inner_text("#forecast-summary").startswith("Organization pool: at this rate, runs out on ")
    assert page.inner_text(f"#forecast-table tr[data-account='{org.admin_user}'] .runs-out") == \
        "no usage in the last 7 days"
    page.select_option("#forecast-form select[name=window_days]", "30")
    tab.wait_until(f"document.querySelector(\"#forecast-table tr[data-account='{org.admin_user}'] .runs-out\")"
                   ".textContent === 'no usage in the last 30 days'")
    page.locator("#forecast").scroll_into_view_if_needed()
    tab.shot("02-forecast")
    tab.close(provoked=[(400, "GET", f"/api/v1/console/statement?start={end}&end={start}&user_id={org.member}")])


def test_a_member_sees_only_their_own_statement_and_forecast(browser, artifacts, console_inference,  # noqa: F811
                                                             org: Org):
    chat(console_inference, org.keys["member"])
    tab = Tab(browser, console_inference.url, artifacts / "statement")
    page = tab.page
    tab.sign_in(org.keys["member"])
    page.click("nav a[href='#statement']")
    tab.wait_until("document.querySelector('#statement-account').textContent !== ''")
    assert page.inner_text("#statement-account").startswith(f"Your allocation in {org.org_id}")
    assert not page.is_visible("#statement-form select[name=user_id]")
    assert page.inner_text("#statement-opening") == "0.000"
    page.wait_for_selector("#forecast-table tbody tr[data-account]")
    accounts = page.eval_on_selector_all("#forecast-table tbody tr", "rows => rows.map(r => r.dataset.account)")
    assert accounts == [org.member]
    assert page.inner_text(f"#forecast-table tr[data-account='{org.member}'] .runs-out").startswith(
        "at this rate, runs out on ")
    tab.shot("03-member-statement")
    tab.close()
