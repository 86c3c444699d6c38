"""creditctl audit: the audit log over CreditAdmin.ListAuditRecords — one organization's records (ORG), or
every record (no ORG: a token with role admin or mint). A table of the newest --limit records, or with
--csv every matching record (paged from the newest), as the console exports them.

creditctl sends who runs it (the OS user and host) as x-on-behalf-of: the authority records it as the
token's claim beside the token's name.
"""

from __future__ import annotations

import argparse
import getpass
import socket
import sys
from typing import Any

from credit.v1 import admin_pb2, admin_pb2_grpc

from .cli_keys import moment, when
from .statement_csv import audit_changes, audit_csv

COLUMNS = ["id", "at", "actor", "on behalf of", "action", "target", "changes"]
PAGE = 1000  # the authority's largest page


def operator_claim() -> str:
    """Who runs creditctl, as the audit log records it: user@host (what the OS says; a claim, not a proof)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def target_text(r: admin_pb2.AuditRecord) -> str:
    where = f" in {r.org_id}" if r.org_id and r.org_id != r.target_id else ""
    return f"{r.target_kind} {r.target_id}{where}".strip()


class AuditCommands:
    """creditctl audit (mixed into cli.Commands, which supplies the stub and the token)."""

    admin: admin_pb2_grpc.CreditAdminStub
    metadata: tuple

    def table(self, headers: list[str], rows: list[list[str]]) -> None:
        raise NotImplementedError  # cli.Commands prints tables

    def audit_page(self, a: argparse.Namespace, before_id: int, limit: int) -> list[admin_pb2.AuditRecord]:
        request = admin_pb2.ListAuditRecordsRequest(org_id=a.org_id or "", actor=a.actor, action=a.action,
                                                    before_id=before_id, limit=limit)
        if a.since is not None:
            request.start_time.CopyFrom(a.since)
        if a.until is not None:
            request.end_time.CopyFrom(a.until)
        return list(self.admin.ListAuditRecords(request, metadata=self.metadata, timeout=30).records)

    def cmd_audit(self, a: argparse.Namespace) -> None:
        if not a.csv:
            records = self.audit_page(a, 0, a.limit or 50)
            self.table(COLUMNS, [[str(r.audit_id), when(r, "at"), r.actor, r.on_behalf_of, r.action, target_text(r),
                                  audit_changes(r.before_json, r.after_json)] for r in records])
            return
        records, before_id = [], 0
        while a.limit == 0 or len(records) < a.limit:
            page = self.audit_page(a, before_id, min(PAGE, a.limit - len(records)) if a.limit else PAGE)
            records += page
            if len(page) < PAGE:
                break
            before_id = page[-1].audit_id
        sys.stdout.write(audit_csv(records))


def add_audit_commands(add: Any, arg: Any) -> None:
    """The command's arguments, added with cli.build_parser's helpers."""
    add("audit", "the audit log: who changed what (an organization's records, or with no ORG every record: the "
                 "operator's token)",
        arg("org_id", nargs="?", metavar="ORG"),
        arg("--actor", default="", help="records of this token, platform:<name>, or on-behalf-of value"),
        arg("--action", default="", help="records of this RPC, e.g. SetAllocation"),
        arg("--since", type=moment, metavar="ISO-TIME", help="at or after (UTC unless an offset is given)"),
        arg("--until", type=moment, metavar="ISO-TIME", help="before"),
        arg("--limit", type=int, default=0, help="at most this many records (table default 50; --csv: all)"),
        arg("--csv", action="store_true", help="CSV, as the console exports it"))
