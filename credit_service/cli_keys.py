"""creditctl key-create / key-revoke / keys: API keys over CreditAdmin (README, "Commands").

A key may expire: `--expires-in DURATION` (90d, 12h, 30m, 45s, 2w or plain seconds; the authority counts from
its database's clock) or `--expires-at ISO` (a time without an offset is UTC); at most two years ahead. The
authority checks the value and answers INVALID_ARGUMENT naming the field, with nothing written. `keys` shows
each key's expiry and when it was last used (to the minute).
"""

from __future__ import annotations

import argparse
import re
from datetime import datetime, timezone
from typing import Any

from google.protobuf import timestamp_pb2

from credit.v1 import admin_pb2, admin_pb2_grpc

COLUMNS = ["key id", "user", "org", "kind", "name", "created", "expires", "last used", "revoked"]
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d{1,12})([smhdw]?)")
# The authority's field → creditctl's option, so an error names the option too.
KEY_OPTIONS = {"ttl_seconds": "--expires-in", "expires_at": "--expires-at"}


def duration(text: str) -> int:
    """Seconds of a duration written 90d, 12h, 30m, 45s, 2w or as plain seconds."""
    match = _DURATION.fullmatch(text.strip())
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"not a duration like 90d, 12h, 30m, 45s or 2w: {text!r}")
    return int(match.group(1)) * UNITS[match.group(2) or "s"]


def moment(text: str) -> timestamp_pb2.Timestamp:
    """An ISO 8601 date or time; without an offset it is UTC."""
    try:
        when = datetime.fromisoformat(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(when)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"not an ISO date or time: {text!r}") from None
    return stamp


def key_hint(details: str) -> str:
    """" (--expires-in)" after an authority's message about an expiry field."""
    option = KEY_OPTIONS.get(details.split(":", 1)[0])
    return f" ({option})" if option else ""


def when(message: Any, name: str, unset: str = "") -> str:
    if not message.HasField(name):
        return unset
    return getattr(message, name).ToDatetime(timezone.utc).isoformat(timespec="seconds")


def key_cells(k: admin_pb2.ApiKey, now: datetime) -> list[str]:
    expires = when(k, "expires_at", "never")
    if k.HasField("expires_at") and k.expires_at.ToDatetime(timezone.utc) <= now:
        expires += " (expired)"
    return [k.key_id, k.user_id, k.org_id, "service" if k.kind == admin_pb2.API_KEY_KIND_SERVICE else "user",
            k.name, when(k, "created_at"), expires, when(k, "last_used_at", "never"), when(k, "revoked_at")]


class KeyCommands:
    """creditctl's API-key commands (mixed into cli.Commands, which supplies the stub and the token)."""

    admin: admin_pb2_grpc.CreditAdminStub
    metadata: tuple

    def table(self, headers: list[str], rows: list[list[str]]) -> None:
        raise NotImplementedError  # cli.Commands prints tables

    def cmd_key_create(self, a: argparse.Namespace) -> None:
        kind = admin_pb2.API_KEY_KIND_SERVICE if a.service else admin_pb2.API_KEY_KIND_USER
        request = admin_pb2.CreateApiKeyRequest(user_id=a.user_id, org_id=a.org, kind=kind, name=a.name,
                                                ttl_seconds=a.expires_in or 0)
        if a.expires_at is not None:
            request.expires_at.CopyFrom(a.expires_at)
        created = self.admin.CreateApiKey(request, metadata=self.metadata, timeout=30)
        print(f"key id: {created.key.key_id}")
        print(f"expires: {when(created.key, 'expires_at', 'never')}")
        print(f"secret (shown once): {created.secret}")

    def cmd_key_revoke(self, a: argparse.Namespace) -> None:
        key = self.admin.RevokeApiKey(admin_pb2.RevokeApiKeyRequest(key_id=a.key_id), metadata=self.metadata,
                                      timeout=30)
        print(f"revoked {key.key_id}")

    def cmd_keys(self, a: argparse.Namespace) -> None:
        keys = self.admin.ListApiKeys(admin_pb2.ListApiKeysRequest(user_id=a.user, org_id=a.org),
                                      metadata=self.metadata, timeout=30).keys
        now = datetime.now(timezone.utc)
        self.table(COLUMNS, [key_cells(k, now) for k in keys])


def add_key_commands(add: Any, arg: Any) -> None:
    """The three commands' arguments, added with cli.build_parser's helpers."""
    create = add("key-create", "create an API key; prints its secret once", arg("user_id"),
                 arg("--org", default=""), arg("--service", action="store_true", help="org service key"),
                 arg("--name", default=""))
    expiry = create.add_mutually_exclusive_group()
    expiry.add_argument("--expires-in", type=duration, metavar="DURATION",
                        help="the key stops working after this long: 90d, 12h, 30m, 45s, 2w (at most two years)")
    expiry.add_argument("--expires-at", type=moment, metavar="ISO",
                        help="the key stops working at this time (ISO 8601; UTC without an offset; at most two "
                             "years ahead)")
    add("key-revoke", "revoke an API key", arg("key_id"))
    add("keys", "list API keys with their expiry and last use (to the minute)", arg("--user", default=""),
        arg("--org", default=""))
