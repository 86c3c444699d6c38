"""Webhook signing secrets are stored encrypted (Fernet; issue 17): absent from a dump of the table, still
signing deliveries, re-encrypted under a new key at rotation; the generated key file is mode 0600."""

from __future__ import annotations

import asyncio
import secrets
import stat

import asyncpg
from cryptography.fernet import Fernet
from test_webhook_safety import _due_alert, alert_db  # noqa: F401 (the fixture)

from credit.v1 import admin_pb2
from credit_service.jobs.alert_delivery import AlertWorker, verify_signature
from credit_service.secret_box import SecretBox, load_secret_box
from credit_service.settings import AlertSettings


async def test_a_webhook_secret_set_through_the_authority_is_not_in_a_dump_of_the_table(authority, world, admin,
                                                                                        database_url):
    org_id = world.org(1_000)
    secret = "dump-me-" + secrets.token_hex(16)
    admin.SetAlertWebhook(admin_pb2.SetAlertWebhookRequest(org_id=org_id, url="https://hooks.example.test/h",
                                                           secret=secret))
    conn = await asyncpg.connect(database_url)
    try:
        dump = "\n".join(r[0] for r in await conn.fetch("SELECT w::text FROM alert_webhooks w"))
        stored = await conn.fetchval("SELECT secret FROM alert_webhooks WHERE org_id = $1", org_id)
    finally:
        await conn.close()
    assert org_id in dump and secret not in dump
    assert stored.startswith("fernet:")
    assert admin.GetAlertWebhook(admin_pb2.GetAlertWebhookRequest(org_id=org_id)).webhook.has_secret


async def test_deliveries_are_signed_with_the_decrypted_secret(alert_db):  # noqa: F811
    url, storage, conn = alert_db
    bodies: list[tuple[bytes, str]] = []

    async def receiver(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _, body = (await reader.readuntil(b"\r\n\r\n")).partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
        body = await reader.readexactly(int(headers["Content-Length"]))
        bodies.append((body, headers["X-Credit-Signature"]))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(receiver, "127.0.0.1", 0)
    try:
        await _due_alert(storage, conn, "signed", f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/h")
        assert "s" * 24 not in await conn.fetchval("SELECT secret FROM alert_webhooks WHERE org_id = 'signed'")
        await AlertWorker(url, storage, AlertSettings(webhook_http_hosts="127.0.0.1")).run_once()
    finally:
        server.close()
    [(body, signature)] = bodies
    assert verify_signature("s" * 24, body, signature)


async def test_rotation_and_plain_text_secrets_are_rewritten_under_the_first_key(alert_db):  # noqa: F811
    url, storage, conn = alert_db
    old, new = Fernet.generate_key(), Fernet.generate_key()
    storage.secret_box = SecretBox([old])
    await _due_alert(storage, conn, "rotated", "https://hooks.example.test/h")
    await conn.execute("INSERT INTO organizations (org_id) VALUES ('legacy'); INSERT INTO org_pools (org_id) "
                       "VALUES ('legacy'); INSERT INTO alert_webhooks (org_id, url, secret) "
                       "VALUES ('legacy', 'https://hooks.example.test/l', 'plain-secret-0123456789')")
    storage.secret_box = SecretBox([new, old])
    assert await storage.encrypt_webhook_secrets() == 2
    assert await storage.encrypt_webhook_secrets() == 0
    storage.secret_box = SecretBox([new])  # the old key dropped: everything still reads
    assert (await storage.get_alert_webhook("rotated")).secret == "s" * 24
    assert (await storage.get_alert_webhook("legacy")).secret == "plain-secret-0123456789"
    assert "plain-secret" not in "".join(r[0] for r in await conn.fetch("SELECT w::text FROM alert_webhooks w"))


def test_without_keys_a_key_file_is_generated_once_with_mode_0600(tmp_path):
    box = load_secret_box("", tmp_path / "data")
    key_file = tmp_path / "data" / "secrets.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_secret_box("", tmp_path / "data").decrypt(box.encrypt("x")) == "x"
    given = Fernet.generate_key().decode()
    assert load_secret_box(f"{given}, {Fernet.generate_key().decode()}", tmp_path / "other").decrypt(
        SecretBox([given.encode()]).encrypt("y")) == "y"
    assert not (tmp_path / "other").exists()


async def test_a_secret_no_key_decrypts_is_recorded_not_sent(alert_db):  # noqa: F811
    url, storage, conn = alert_db
    await _due_alert(storage, conn, "otherkey", "https://hooks.example.test/h")
    storage.secret_box = SecretBox([Fernet.generate_key()])  # a host configured with other keys
    await AlertWorker(url, storage, AlertSettings()).run_once()
    errors = [r["error"] for r in await conn.fetch("SELECT error FROM alert_deliveries WHERE org_id = 'otherkey'")]
    assert errors == ["secret_unreadable"]
