"""creditctl platform-create / platform-rotate / platform-revoke / platforms: platform credentials over
CreditAdmin (README, "Integrating a platform"). They need the operator's token (role mint).

The secret is printed once, on a line containing "secret"; the authority checks every value and answers
INVALID_ARGUMENT naming the field, with nothing written.
"""

from __future__ import annotations

import argparse
from typing import Any

from credit.v1 import admin_pb2, admin_pb2_grpc

from .cli_keys import when

COLUMNS = ["name", "orgs", "individuals", "roles", "created", "by", "rotated", "old secret valid until", "revoked"]


def names(text: str) -> list[str]:
    """A comma-separated list (ORG[,ORG…], spend[,read]); empty items are dropped."""
    return [item.strip() for item in text.split(",") if item.strip()]


def credential_cells(c: admin_pb2.PlatformCredential) -> list[str]:
    return [c.name, ",".join(c.org_ids) or "-", "yes" if c.individuals else "no", ",".join(c.roles),
            when(c, "created_at"), c.created_by, when(c, "rotated_at"), when(c, "previous_secret_valid_until"),
            when(c, "revoked_at")]


class PlatformCommands:
    """creditctl's platform-credential commands (mixed into cli.Commands, which supplies the stub and the token)."""

    admin: admin_pb2_grpc.CreditAdminStub
    metadata: tuple

    def table(self, headers: list[str], rows: list[list[str]]) -> None:
        raise NotImplementedError  # cli.Commands prints tables

    def show_secret(self, credential: admin_pb2.PlatformCredential, secret: str) -> None:
        print(f"caller name: {credential.caller} (what its reservations and usage rows record)")
        print(f"secret (shown once): {secret}")

    def cmd_platform_create(self, a: argparse.Namespace) -> None:
        created = self.admin.CreatePlatformCredential(admin_pb2.CreatePlatformCredentialRequest(
            name=a.name, org_ids=names(a.orgs), individuals=a.individuals, roles=names(a.roles)),
            metadata=self.metadata, timeout=30)
        print(f"created platform credential {created.credential.name}")
        self.table(COLUMNS, [credential_cells(created.credential)])
        self.show_secret(created.credential, created.secret)

    def cmd_platform_rotate(self, a: argparse.Namespace) -> None:
        rotated = self.admin.RotatePlatformCredential(admin_pb2.RotatePlatformCredentialRequest(
            name=a.name, grace_seconds=a.grace_seconds), metadata=self.metadata, timeout=30)
        print(f"rotated platform credential {rotated.credential.name}; the previous secret stays valid until "
              f"{when(rotated.credential, 'previous_secret_valid_until')}")
        self.show_secret(rotated.credential, rotated.secret)

    def cmd_platform_revoke(self, a: argparse.Namespace) -> None:
        revoked = self.admin.RevokePlatformCredential(admin_pb2.RevokePlatformCredentialRequest(name=a.name),
                                                      metadata=self.metadata, timeout=30)
        print(f"revoked platform credential {revoked.credential.name} at {when(revoked.credential, 'revoked_at')} "
              "(every authority refuses it within CREDIT_PLATFORM_CACHE_SECONDS)")

    def cmd_platforms(self, a: argparse.Namespace) -> None:
        answer = self.admin.ListPlatformCredentials(admin_pb2.ListPlatformCredentialsRequest(),
                                                    metadata=self.metadata, timeout=30)
        self.table(COLUMNS, [credential_cells(c) for c in answer.credentials])


def add_platform_commands(add: Any, arg: Any) -> None:
    """The four commands' arguments, added with cli.build_parser's helpers."""
    add("platform-create", "create a platform credential scoped to organizations (and individual balances with "
                           "--individuals); prints its secret once",
        arg("name"), arg("--orgs", default="", metavar="ORG[,ORG…]", help="organizations it may act for"),
        arg("--individuals", action="store_true", help="it may also act on individual balances"),
        arg("--roles", required=True, metavar="spend[,read]", help="spend (the hot path) and/or read (balances, "
                                                                    "usage)"))
    add("platform-rotate", "give a platform credential a new secret (printed once); the previous one stays valid "
                           "for a grace period", arg("name"),
        arg("--grace-seconds", type=int, default=0, help="how long the previous secret stays valid (default: "
                                                          "CREDIT_PLATFORM_GRACE_SECONDS of the authority, 3600)"))
    add("platform-revoke", "revoke a platform credential (all its secrets)", arg("name"))
    add("platforms", "list platform credentials (never their secrets)")
