"""Statements and forecasts in the console's REST API, against the real authority: who sees which account
(owners/admins the pool and any member's allocation, a member only their own, an individual their balance),
the figures equal to the authority's GetStatement / GetForecast, bad periods and windows refused with 400,
and the statement's CSV safe to open in a spreadsheet."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import date, datetime, time, timedelta, timezone

import httpx
import pytest
from rest_support import make_key

from credit.v1 import admin_pb2
from credit_service.money import format_credits

from .conftest import Org, auth, chat
from .test_console_api import get, members, post

CSV_HEADER = ["section", "at", "kind", "key", "requests", "credits", "millicredits", "source", "reference", "note"]
FORMULAS = ("=HYPERLINK(\"http://evil.example\")", "+1-555-0100", "-2+3", "@SUM(A1:A9)")


def today() -> date:
    return datetime.now(timezone.utc).date()


def period(days_back: int = 2) -> dict[str, str]:
    """From `days_back` days ago to today (UTC): a period that ends now."""
    return {"start": (today() - timedelta(days=days_back)).isoformat(), "end": today().isoformat()}


def authority_statement(admin, org_id: str, user_id: str, start: str) -> admin_pb2.Statement:
    request = admin_pb2.GetStatementRequest(account=admin_pb2.AccountRef(org_id=org_id, user_id=user_id))
    request.start_time.FromDatetime(datetime.combine(date.fromisoformat(start), time(), timezone.utc))
    return admin.GetStatement(request)


def lines(pb_lines) -> list[tuple]:
    return [(x.kind, x.amount_millicredits, format_credits(x.amount_millicredits), x.source, x.reference, x.note)
            for x in pb_lines]


def view_lines(view_lines_) -> list[tuple]:
    return [(x["kind"], x["amount_millicredits"], x["amount"], x["source"], x["reference"], x["note"])
            for x in view_lines_]


def assert_same_statement(view: dict, pb: admin_pb2.Statement) -> None:
    """The console's statement is the authority's, figure for figure and line for line."""
    for name, value in (("opening_balance", pb.opening_balance_millicredits),
                        ("credits_in_total", pb.credits_in_millicredits),
                        ("adjustments_total", pb.adjustments_millicredits),
                        ("allocation_changes_total", pb.allocation_changes_millicredits),
                        ("usage", pb.usage_millicredits), ("closing_balance", pb.closing_balance_millicredits)):
        assert (view[f"{name}_millicredits"], view[name]) == (value, format_credits(value)), name
    for name in ("credits_in", "adjustments", "allocation_changes"):
        assert view_lines(view[name]) == lines(getattr(pb, name)), name
    for name in ("usage_by_model", "usage_by_member"):
        assert [(u["key"], u["requests"], u["credits_millicredits"]) for u in view[name]] == \
            [(u.key, u.requests, u.credits_used_millicredits) for u in getattr(pb, name)], name
    assert (view["account"]["org_id"], view["account"]["user_id"]) == (pb.account.org_id, pb.account.user_id)
    assert view["closing_balance_millicredits"] == (
        view["opening_balance_millicredits"] + view["credits_in_total_millicredits"]
        + view["adjustments_total_millicredits"] + view["allocation_changes_total_millicredits"]
        - view["usage_millicredits"])


@pytest.fixture
def history(console_inference, org: Org, admin) -> dict[str, str]:
    """A pool topped up by the operator under references a spreadsheet would run, a call by the member and
    one by the other member, and the member's allocation lowered by 5 credits from the console."""
    references = {}
    for text in FORMULAS:
        reference = f"{text} {uuid.uuid4().hex[:6]}"
        admin.TopUpPool(admin_pb2.TopUpPoolRequest(org_id=org.org_id, amount_millicredits=1_000,
                                                   purchase_reference=reference))
        references[text] = reference
    chat(console_inference, org.keys["member"])
    chat(console_inference, org.keys["other"])
    lowered = post(console_inference, org.keys["owner"], "/org/allocations",
                   {"user_id": org.member, "allocation": "95"})
    assert lowered.status_code == 200, lowered.text
    return references


def test_an_admin_sees_the_pool_and_a_members_statement_as_the_authority_computes_them(
        console_inference, org: Org, admin, history):
    for who in ("owner", "admin"):
        response = get(console_inference, org.keys[who], "/statement", **period())
        assert response.status_code == 200, response.text
        view = response.json()
        assert view["account"] == {"scope": "pool", "org_id": org.org_id, "user_id": "",
                                   "description": "the organization's pool"}
        assert (view["start_date"], view["end_date"]) == (period()["start"], period()["end"])
        assert_same_statement(view, authority_statement(admin, org.org_id, "", period()["start"]))
    # The pool: 1,000 credits plus the four operator top-ups, each with its source and reference; two calls.
    assert view["opening_balance"] == "0.000"
    assert [(x["kind"], x["reference"]) for x in view["credits_in"]][-4:] == \
        [("top_up", history[f]) for f in FORMULAS]
    assert all(x["source"].startswith("operator ") for x in view["credits_in"])
    assert view["credits_in_total"] == "1004.000"
    assert [u["key"] for u in view["usage_by_model"]] == ["up-chat"]
    assert {u["key"] for u in view["usage_by_member"]} == {org.member, org.other}
    assert view["usage_millicredits"] > 0 and view["closing_balance_millicredits"] == \
        1_004_000 - view["usage_millicredits"]

    # A member's allocation: set to 100, lowered to 95 from the console (a negative change, by the owner).
    member = get(console_inference, org.keys["admin"], "/statement", user_id=org.member, **period()).json()
    assert member["account"]["scope"] == "allocation" and member["account"]["user_id"] == org.member
    assert_same_statement(member, authority_statement(admin, org.org_id, org.member, period()["start"]))
    assert [(x["amount"], x["source"]) for x in member["allocation_changes"]][-1] == \
        ("-5.000", f"console:{org.owner}")
    assert member["usage_by_member"] == []
    closing = members(admin, org.org_id)[org.member]
    assert member["closing_balance_millicredits"] == closing.allocation_millicredits - closing.used_millicredits

    outsider = get(console_inference, org.keys["owner"], "/statement", user_id="someone-else", **period())
    assert outsider.status_code == 403 and outsider.json()["error"]["type"] == "permission_error"


def test_a_member_sees_only_their_own_allocation(console_inference, org: Org, admin, history):
    key = org.keys["member"]
    mine = get(console_inference, key, "/statement", **period())
    assert mine.status_code == 200, mine.text
    assert mine.json()["account"] == {"scope": "allocation", "org_id": org.org_id, "user_id": org.member,
                                      "description": "a member's allocation"}
    assert_same_statement(mine.json(), authority_statement(admin, org.org_id, org.member, period()["start"]))
    named = get(console_inference, key, "/statement", user_id=org.member, **period()).json()
    assert {**named, "end": None} == {**mine.json(), "end": None}  # the same statement (ending now, a bit later)
    assert mine.json()["up_to_now"] is True
    refused = [get(console_inference, key, "/statement", user_id=org.other, **period()),
               get(console_inference, key, "/statement.csv", user_id=org.owner, **period())]
    assert [r.status_code for r in refused] == [403, 403], [r.text for r in refused]
    assert all(r.json()["error"]["type"] == "permission_error" for r in refused)

    forecast = get(console_inference, key, "/forecast").json()
    assert forecast["scope"] == "member" and forecast["total"] is None
    assert [m["user_id"] for m in forecast["members"]] == [org.member]


def test_an_individual_sees_their_balance(console_inference, world, admin):
    solo = world.user()
    reference = f"@grant {uuid.uuid4().hex[:6]}"
    admin.GrantIndividualCredits(admin_pb2.GrantIndividualCreditsRequest(
        user_id=solo, amount_millicredits=7_000, reason="=welcome", reference=reference))
    key = make_key(admin, solo)[0]
    chat(console_inference, key)
    view = get(console_inference, key, "/statement", **period(0)).json()
    assert view["account"] == {"scope": "individual", "org_id": "", "user_id": solo,
                               "description": "an individual balance"}
    assert_same_statement(view, authority_statement(admin, "", solo, period(0)["start"]))
    assert [(x["kind"], x["amount"], x["reference"]) for x in view["credits_in"]] == [("grant", "7.000", reference)]
    assert view["usage_by_model"][0]["key"] == "up-chat" and view["usage_by_member"] == []
    assert get(console_inference, key, "/statement", user_id="someone-else").status_code == 403

    forecast = get(console_inference, key, "/forecast", window_days=1).json()
    assert (forecast["scope"], forecast["window_days"], forecast["members"]) == ("individual", 1, [])
    total = forecast["total"]
    assert total["user_id"] == solo and total["remaining_millicredits"] == 7_000 - view["usage_millicredits"]
    assert total["used_in_window_millicredits"] == view["usage_millicredits"]
    assert total["burn_rate_per_day_millicredits"] == view["usage_millicredits"]  # one day's window
    assert total["runs_out_at"] is not None


def test_an_admin_sees_the_pool_and_every_members_forecast(console_inference, org: Org, admin, history):
    forecast = get(console_inference, org.keys["owner"], "/forecast", window_days=30).json()
    pb = admin.GetForecast(admin_pb2.GetForecastRequest(account=admin_pb2.AccountRef(org_id=org.org_id),
                                                        window_days=30))
    assert (forecast["scope"], forecast["window_days"]) == ("org", 30)

    def figures(line: dict) -> tuple:
        return (line["user_id"], line["remaining_millicredits"], line["used_in_window_millicredits"],
                line["burn_rate_per_day_millicredits"], line["runs_out_at"] is not None)

    def pb_figures(line: admin_pb2.ForecastLine) -> tuple:
        return (line.user_id, line.remaining_millicredits, line.used_in_window_millicredits,
                line.burn_rate_millicredits_per_day, line.HasField("runs_out_at"))

    assert figures(forecast["total"]) == pb_figures(pb.total)
    assert [figures(m) for m in forecast["members"]] == [pb_figures(m) for m in pb.members]
    assert {m["user_id"] for m in forecast["members"]} == {org.owner, org.admin_user, org.member, org.other}
    by_user = {m["user_id"]: m for m in forecast["members"]}
    assert by_user[org.owner]["runs_out_at"] is None  # no usage: no run-out date
    used = by_user[org.member]
    assert used["burn_rate_per_day_millicredits"] == -(-used["used_in_window_millicredits"] // 30)
    runs_out = datetime.fromisoformat(used["runs_out_at"])
    computed = datetime.fromisoformat(forecast["computed_at"])
    expected = timedelta(days=used["remaining_millicredits"] / used["burn_rate_per_day_millicredits"])
    assert abs((runs_out - computed) - expected) < timedelta(seconds=1)
    used_by_all = sum(m.used_millicredits for m in members(admin, org.org_id).values())
    assert forecast["total"]["remaining_millicredits"] == 1_004_000 - used_by_all > 0
    assert get(console_inference, org.keys["admin"], "/forecast").json()["window_days"] == 7


@pytest.mark.parametrize(("params", "code"), [
    ({"start": "2025-13-01"}, "invalid_date"), ({"start": "yesterday"}, "invalid_date"),
    ({"start": "2025-1-1"}, "invalid_date"), ({"end": "2025-02-30"}, "invalid_date"),
    ({"start": "1960-01-01", "end": "1960-01-02"}, "invalid_date"),
    ({"start": "2025-03-02", "end": "2025-03-01"}, "invalid_range"),
    ({"start": "2024-01-01", "end": "2025-01-01"}, "invalid_range"),  # 367 days
    ({"start": "2999-01-01", "end": "2999-01-31"}, "invalid_range"),  # after today
    ({"user_id": "not an id!"}, "invalid_id"),
])
def test_a_bad_period_is_refused_with_400_and_changes_nothing(console_inference, org: Org, admin, params, code):
    before = (members(admin, org.org_id),
              admin.GetOrganization(admin_pb2.GetOrganizationRequest(org_id=org.org_id)))
    for path in ("/statement", "/statement.csv"):
        response = get(console_inference, org.keys["owner"], path, **params)
        assert response.status_code == 400, (params, response.text)
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error", code), error
    assert (members(admin, org.org_id),
            admin.GetOrganization(admin_pb2.GetOrganizationRequest(org_id=org.org_id))) == before


def test_a_full_year_is_a_valid_period(console_inference, org: Org):
    year = {"start": (today() - timedelta(days=365)).isoformat(), "end": today().isoformat()}  # 366 days
    assert get(console_inference, org.keys["owner"], "/statement", **year).status_code == 200


@pytest.mark.parametrize("window_days", ["0", "366", "-1", "seven", "7.5"])
def test_a_forecast_window_out_of_range_is_400_in_openais_error_body(console_inference, org: Org, window_days):
    response = httpx.get(f"{console_inference.url}/api/v1/console/forecast", headers=auth(org.keys["owner"]),
                         params={"window_days": window_days}, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and "window_days" in error["message"]


def test_the_statement_csv_escapes_formulas_and_keeps_numbers(console_inference, org: Org, admin, history):
    response = get(console_inference, org.keys["owner"], "/statement.csv", **period())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    start, end = period()["start"], period()["end"]
    assert response.headers["content-disposition"] == \
        f'attachment; filename="statement-{org.org_id}-{start}-{end}.csv"'
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == CSV_HEADER
    table = [dict(zip(CSV_HEADER, row, strict=True)) for row in rows[1:]]
    view = get(console_inference, org.keys["owner"], "/statement", **period()).json()
    sections = [r["section"] for r in table]
    assert sections[:2] == ["account", "opening_balance"] and sections[-1] == "closing_balance"
    assert table[0]["key"] == org.org_id and table[0]["kind"] == "pool"
    assert table[-1]["millicredits"] == str(view["closing_balance_millicredits"])
    top_ups = [r for r in table if r["section"] == "credits_in"]
    assert [(r["credits"], r["millicredits"]) for r in top_ups] == \
        [(x["amount"], str(x["amount_millicredits"])) for x in view["credits_in"]]
    # Every reference a spreadsheet would run is written with a leading quote; the text is otherwise kept.
    assert [r["reference"] for r in top_ups][-4:] == ["'" + history[f] for f in FORMULAS]
    by_model = [r for r in table if r["section"] == "usage_by_model"]
    assert [(r["key"], r["requests"]) for r in by_model] == [("up-chat", "2")]
    usage = next(r for r in table if r["section"] == "total_usage")
    assert usage["credits"] == format_credits(-view["usage_millicredits"]) and usage["credits"].startswith("-")
    assert usage["millicredits"] == str(-view["usage_millicredits"])  # a negative number stays a number

    member_csv = get(console_inference, org.keys["owner"], "/statement.csv", user_id=org.member, **period())
    assert f'filename="statement-{org.org_id}-{org.member}-{start}-{end}.csv"' in \
        member_csv.headers["content-disposition"]
    changes = [dict(zip(CSV_HEADER, row, strict=True)) for row in csv.reader(io.StringIO(member_csv.text))
               if row[0] == "allocation_change"]
    assert (changes[-1]["credits"], changes[-1]["millicredits"]) == ("-5.000", "-5000")


def test_an_individual_statement_csv_escapes_the_grants_reference_and_note(console_inference, world, admin):
    solo = world.user()
    reference = f"-{uuid.uuid4().hex[:6]}+1"
    admin.GrantIndividualCredits(admin_pb2.GrantIndividualCreditsRequest(
        user_id=solo, amount_millicredits=2_500, reason="@bonus", reference=reference))
    key = make_key(admin, solo)[0]
    response = get(console_inference, key, "/statement.csv", **period(0))
    assert f'filename="statement-{solo}-{today()}-{today()}.csv"' in response.headers["content-disposition"]
    grant = next(dict(zip(CSV_HEADER, row, strict=True)) for row in csv.reader(io.StringIO(response.text))
                 if row[0] == "credits_in")
    assert (grant["credits"], grant["reference"]) == ("2.500", "'" + reference)
    assert grant["source"].startswith("operator ") and grant["note"].endswith(": @bonus")
