"""The console's keys: an optional expiry at creation (checked: 400 naming the field, nothing written), and
each key's expiry and last use in the list."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from credit.v1 import admin_pb2

from .conftest import Org, chat
from .test_console_api import get, post

TWO_YEARS = 2 * 365 * 86400


def test_keys_with_an_expiry_show_it_and_their_last_use(console_inference, org: Org, admin):
    at = (datetime.now(timezone.utc) + timedelta(days=30)).replace(microsecond=0)
    created = post(console_inference, org.keys["owner"], "/keys",
                   {"user_id": org.member, "name": "month", "expires_at": at.isoformat()})
    assert created.status_code == 200, created.text
    key = created.json()
    assert (key["expires_at"], key["last_used_at"], key["expired"], key["active"]) == (at.isoformat(), None,
                                                                                       False, True)
    short = post(console_inference, org.keys["member"], "/keys", {"name": "short", "ttl_seconds": 600}).json()
    assert datetime.fromisoformat(short["expires_at"]) - datetime.fromisoformat(short["created_at"]) \
        == timedelta(seconds=600)
    local = post(console_inference, org.keys["member"], "/keys",
                 {"name": "no offset", "expires_at": at.replace(tzinfo=None).isoformat()}).json()
    assert local["expires_at"] == at.isoformat()  # without an offset: UTC

    chat(console_inference, key["secret"])
    listed = {k["key_id"]: k for k in get(console_inference, org.keys["owner"], "/keys").json()["data"]}
    used = listed[key["key_id"]]
    assert used["expires_at"] == at.isoformat() and used["last_used_at"] is not None
    stored = admin.ListApiKeys(admin_pb2.ListApiKeysRequest(user_id=org.member)).keys
    assert used["last_used_at"] == next(k for k in stored if k.key_id == key["key_id"]) \
        .last_used_at.ToDatetime(timezone.utc).isoformat()
    assert listed[short["key_id"]]["last_used_at"] is None


def test_bad_expiries_are_refused_naming_the_field_and_nothing_is_written(console_inference, org: Org, admin):
    now = datetime.now(timezone.utc)
    before = len(admin.ListApiKeys(admin_pb2.ListApiKeysRequest(user_id=org.member)).keys)
    cases = [({"expires_at": "next tuesday"}, "expires_at"),
             ({"expires_at": (now - timedelta(minutes=5)).isoformat()}, "expires_at"),
             ({"expires_at": (now + timedelta(seconds=TWO_YEARS + 86400)).isoformat()}, "expires_at"),
             ({"ttl_seconds": -5}, "ttl_seconds"), ({"ttl_seconds": 0}, "ttl_seconds"),
             ({"ttl_seconds": TWO_YEARS + 1}, "ttl_seconds"), ({"ttl_seconds": 10**30}, "ttl_seconds"),
             ({"ttl_seconds": 60, "expires_at": (now + timedelta(days=1)).isoformat()}, "expires_at")]
    for extra, field in cases:
        response = post(console_inference, org.keys["owner"], "/keys", {"user_id": org.member, **extra})
        assert response.status_code == 400, (extra, response.text)
        assert response.json()["error"]["param"] == field, (extra, response.text)
    for extra in ({"ttl_seconds": "60"}, {"ttl_seconds": 1.5}, {"expires_at": 1700000000}):
        response = post(console_inference, org.keys["owner"], "/keys", {"user_id": org.member, **extra})
        assert response.status_code == 400 and next(iter(extra)) in response.json()["error"]["message"], extra
    assert len(admin.ListApiKeys(admin_pb2.ListApiKeysRequest(user_id=org.member)).keys) == before
