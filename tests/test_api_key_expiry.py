"""API keys people can manage (#15): an optional expiry, enforced by VerifyApiKey and by the REST service
(whose key cache never outlives the expiry), and a last-used time written at most once a minute."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import grpc
import httpx
import pytest
from google.protobuf import timestamp_pb2
from helpers import bad_request
from rest_support import InferenceProcess
from test_creditctl import ctl

from credit.v1 import admin_pb2

TWO_YEARS = 2 * 365 * 86400


@pytest.fixture(scope="module")
def long_cache_inference(authority, tokens, models_file):
    """A REST service that would trust a verified key for two minutes: only the expiry can end that sooner."""
    process = InferenceProcess(authority, tokens.spend, models_file,
                               {"INFERENCE_KEY_CACHE_SECONDS": "120"}).start()
    yield process
    process.stop()


def verify(admin, secret: str) -> admin_pb2.VerifyApiKeyResponse:
    return admin.VerifyApiKey(admin_pb2.VerifyApiKeyRequest(secret=secret))


def models(inference: InferenceProcess, secret: str) -> httpx.Response:
    return httpx.get(f"{inference.base_url}/models", headers={"Authorization": f"Bearer {secret}"}, timeout=30)


def poll(check, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"still not {what} after {seconds} s"
        time.sleep(0.1)


def stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(moment)
    return ts


def test_a_short_lived_key_works_then_is_refused_like_an_unknown_one(world, admin, long_cache_inference):
    org, user = world.funded_member(allocation_mc=10_000)
    created = admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(user_id=user, name="short", ttl_seconds=2))
    key = created.key
    # ttl_seconds counts from the database's clock, the same now() as created_at.
    assert key.expires_at.ToDatetime() - key.created_at.ToDatetime() == timedelta(seconds=2)
    listed = admin.ListApiKeys(admin_pb2.ListApiKeysRequest(user_id=user)).keys
    assert [k.expires_at for k in listed] == [key.expires_at]

    answer = verify(admin, created.secret)
    assert answer.valid and answer.key.expires_at == key.expires_at
    first = models(long_cache_inference, created.secret)
    assert first.status_code == 200, first.text  # now cached by the REST service, for at most 2 s

    poll(lambda: not verify(admin, created.secret).valid, "refused by VerifyApiKey")
    poll(lambda: models(long_cache_inference, created.secret).status_code == 401, "refused by the REST API "
         "(its key cache keeps keys 120 s: only the expiry can end that)")
    refused = models(long_cache_inference, created.secret)
    unknown = models(long_cache_inference, "ck_0123456789abcdef.not-a-key")
    assert refused.status_code == unknown.status_code == 401
    assert refused.json() == unknown.json()
    assert refused.json()["error"]["code"] == "invalid_api_key"
    # The key is still listed, with its expiry; it was never revoked.
    after = admin.ListApiKeys(admin_pb2.ListApiKeysRequest(user_id=user)).keys[0]
    assert after.HasField("expires_at") and not after.HasField("revoked_at")


async def test_last_use_is_recorded_to_the_minute(world, admin, db):
    _, user = world.funded_member(allocation_mc=10_000)
    created = admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(user_id=user, name="used"))
    key_id = created.key.key_id
    assert not created.key.HasField("last_used_at") and not created.key.HasField("expires_at")

    async def stored():
        return tuple(await db.fetchrow("SELECT last_used_at, xmin::text AS version FROM api_keys WHERE key_id = $1",
                                       key_id))

    wrong = created.secret[:-1] + ("A" if created.secret[-1] != "A" else "B")
    assert not verify(admin, wrong).valid
    assert (await stored())[0] is None  # a wrong secret is no use of the key

    first = verify(admin, created.secret)
    used_at, version = await stored()
    assert used_at is not None and first.key.last_used_at.ToDatetime(timezone.utc) == used_at
    second = verify(admin, created.secret)
    assert await stored() == (used_at, version)  # within the minute: not written again (same row version)
    assert second.key.last_used_at == first.key.last_used_at
    listed = admin.ListApiKeys(admin_pb2.ListApiKeysRequest(user_id=user)).keys[0]
    assert listed.last_used_at == first.key.last_used_at

    await db.execute("UPDATE api_keys SET last_used_at = last_used_at - interval '61 seconds' WHERE key_id = $1",
                     key_id)
    aged = (await stored())[0]
    third = verify(admin, created.secret)
    refreshed, _ = await stored()
    assert refreshed > aged and third.key.last_used_at.ToDatetime(timezone.utc) == refreshed

    admin.RevokeApiKey(admin_pb2.RevokeApiKeyRequest(key_id=key_id))
    await db.execute("UPDATE api_keys SET last_used_at = NULL WHERE key_id = $1", key_id)
    assert not verify(admin, created.secret).valid
    assert (await stored())[0] is None  # a refused key is not recorded as used


def _bad_requests(user: str) -> list[tuple[str, admin_pb2.CreateApiKeyRequest]]:
    now = datetime.now(timezone.utc)
    past, far = stamp(now - timedelta(minutes=1)), stamp(now + timedelta(seconds=TWO_YEARS + 86400))

    def request(**fields) -> admin_pb2.CreateApiKeyRequest:
        return admin_pb2.CreateApiKeyRequest(user_id=user, name="bad", **fields)

    return [("ttl_seconds", request(ttl_seconds=-1)), ("ttl_seconds", request(ttl_seconds=TWO_YEARS + 1)),
            ("ttl_seconds", request(ttl_seconds=2**63 - 1)), ("expires_at", request(expires_at=past)),
            ("expires_at", request(expires_at=far)),
            ("expires_at", request(expires_at=timestamp_pb2.Timestamp(seconds=2**40))),
            ("expires_at", request(expires_at=timestamp_pb2.Timestamp(seconds=1, nanos=-5))),
            ("expires_at", request(ttl_seconds=60, expires_at=stamp(now + timedelta(days=1))))]


async def test_bad_expiries_are_refused_naming_the_field_and_nothing_is_written(world, admin, db):
    user = world.user()
    for field, request in _bad_requests(user):
        with pytest.raises(grpc.RpcError) as raised:
            admin.CreateApiKey(request)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, request)
        violations = bad_request(raised.value).field_violations
        assert [v.field for v in violations] == [field], raised.value.details()
    assert await db.fetchval("SELECT count(*) FROM api_keys WHERE user_id = $1", user) == 0

    at = (datetime.now(timezone.utc) + timedelta(days=365)).replace(microsecond=0)
    longest = admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(user_id=user, ttl_seconds=TWO_YEARS)).key
    dated = admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(user_id=user, expires_at=stamp(at))).key
    assert longest.expires_at.ToDatetime() - longest.created_at.ToDatetime() == timedelta(seconds=TWO_YEARS)
    assert dated.expires_at.ToDatetime(timezone.utc) == at


def test_creditctl_creates_expiring_keys_and_shows_expiry_and_last_use(authority, tokens, world, admin):
    _, user = world.funded_member(allocation_mc=10_000)
    out = ctl(authority, tokens, "key-create", user, "--name", "ci", "--expires-in", "30d").stdout
    key_id = out.split("key id: ")[1].split()[0]
    secret = out.split("secret (shown once): ")[1].split()[0]
    expires = out.split("expires: ")[1].split()[0]
    key = admin.ListApiKeys(admin_pb2.ListApiKeysRequest(user_id=user)).keys[0]
    assert key.key_id == key_id and expires == key.expires_at.ToDatetime(timezone.utc).isoformat(timespec="seconds")
    assert key.expires_at.seconds - key.created_at.seconds == 30 * 86400

    at = (datetime.now(timezone.utc) + timedelta(days=7)).replace(microsecond=0, tzinfo=None)
    dated = ctl(authority, tokens, "key-create", user, "--expires-at", at.isoformat()).stdout
    assert f"expires: {at.replace(tzinfo=timezone.utc).isoformat()}" in dated  # no offset: UTC
    ctl(authority, tokens, "key-create", user, "--name", "forever")

    verify(admin, secret)
    table = ctl(authority, tokens, "keys", "--user", user).stdout.splitlines()
    header = table[0].split()
    assert header[:6] == ["key", "id", "user", "org", "kind", "name"] and "expires" in header and "last" in header
    rows = {line.split()[0]: line for line in table[2:]}
    used = admin.ListApiKeys(admin_pb2.ListApiKeysRequest(user_id=user)).keys
    by_id = {k.key_id: k for k in used}
    assert expires in rows[key_id]
    assert by_id[key_id].last_used_at.ToDatetime(timezone.utc).isoformat(timespec="seconds") in rows[key_id]
    forever = next(k for k in used if k.name == "forever")
    assert rows[forever.key_id].count("never") == 2  # no expiry, never used


def test_creditctl_refuses_bad_expiries_and_writes_nothing(authority, tokens, world, admin):
    user = world.user()
    past = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat(timespec="seconds")
    for args, code, says in ((["--expires-in", "3y"], 2, "not a duration"), (["--expires-in", "0"], 2, "duration"),
                             (["--expires-at", "next week"], 2, "not an ISO date"),
                             (["--expires-in", "1d", "--expires-at", past], 2, "not allowed with"),
                             (["--expires-in", "800d"], 1, "ttl_seconds"),
                             (["--expires-at", past], 1, "expires_at")):
        result = ctl(authority, tokens, "key-create", user, *args, check=False)
        assert result.returncode == code and says in result.stderr, (args, result.stderr)
        if code == 1:
            assert "INVALID_ARGUMENT" in result.stderr and ("--expires-in" in result.stderr
                                                            or "--expires-at" in result.stderr)
    assert not admin.ListApiKeys(admin_pb2.ListApiKeysRequest(user_id=user)).keys
