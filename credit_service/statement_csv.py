"""CSV exports: the one rule for a cell a spreadsheet shows but never runs, a statement as one table, and the
audit log, each written the same by the console's export and by `creditctl statement --csv` / `audit --csv`."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import timezone
from typing import Any

from google.protobuf import timestamp_pb2

from credit.v1 import admin_pb2

from .money import format_credits

STATEMENT_COLUMNS = ("section", "at", "kind", "key", "requests", "credits", "millicredits", "source",
                     "reference", "note")
_NUMBER = re.compile(r"-?\d{1,30}(\.\d{1,30})?")  # what csv_cell leaves alone: no formula is only digits


def csv_cell(value: Any) -> str:
    """One CSV cell that a spreadsheet shows as written, never runs: text starting with = + - @ tab or CR
    gets a leading quote (a plain number such as -5.000 stays a number); dicts and lists as JSON. Every CSV
    export writes its cells through this."""
    text = "" if value is None else json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
    if _NUMBER.fullmatch(text):
        return text
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def scope_of(account: admin_pb2.AccountRef) -> str:
    """'pool' (an org's), 'allocation' (a member's in an org) or 'individual' (a user's own balance)."""
    if not account.user_id:
        return "pool"
    return "allocation" if account.org_id else "individual"


def _time(ts: timestamp_pb2.Timestamp) -> str | None:
    return ts.ToDatetime(timezone.utc).isoformat() if ts.ByteSize() else None


def statement_csv(s: admin_pb2.Statement, note: str) -> str:
    """One table a spreadsheet opens: the account and period (note), the opening balance, one row per
    line, the usage by model and by member, the sums and the closing balance. Credits are signed
    (+ in, − out)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(STATEMENT_COLUMNS)

    def row(section: str, mc: int | None = None, **cells: Any) -> None:
        if mc is not None:
            cells.update(credits=format_credits(mc), millicredits=mc)
        writer.writerow([csv_cell(section if c == "section" else cells.get(c)) for c in STATEMENT_COLUMNS])

    row("account", kind=scope_of(s.account), key=s.account.user_id or s.account.org_id, source=s.account.org_id,
        note=note)
    row("opening_balance", s.opening_balance_millicredits, at=_time(s.start_time))
    for section, lines in (("credits_in", s.credits_in), ("adjustment", s.adjustments),
                           ("allocation_change", s.allocation_changes)):
        for x in lines:
            row(section, x.amount_millicredits, at=_time(x.at), kind=x.kind, source=x.source,
                reference=x.reference, note=x.note)
    for section, groups in (("usage_by_model", s.usage_by_model), ("usage_by_member", s.usage_by_member)):
        for g in groups:
            row(section, g.credits_used_millicredits, key=g.key, requests=g.requests)
    for section, mc in (("total_credits_in", s.credits_in_millicredits),
                        ("total_adjustments", s.adjustments_millicredits),
                        ("total_allocation_changes", s.allocation_changes_millicredits),
                        ("total_usage", -s.usage_millicredits)):
        row(section, mc)
    row("closing_balance", s.closing_balance_millicredits, at=_time(s.end_time))
    return out.getvalue()


# ---- the audit log's export (console and `creditctl audit --csv`) ----

AUDIT_COLUMNS = ("audit_id", "at", "actor", "actor_kind", "on_behalf_of", "action", "target_kind", "org_id",
                 "target_id", "changes", "before", "after", "request_id", "source", "forwarded_for")


def audit_changes(before_json: str, after_json: str) -> str:
    """The fields an audit record's change moved, as "field: old -> new" joined by "; " (created: every
    field of after; deleted: "deleted")."""
    before, after = json.loads(before_json or "null"), json.loads(after_json or "null")
    if before is None and after is None:
        return ""
    if after is None:
        return "deleted"
    before = before or {}
    moved = [f"{k}: {json.dumps(before.get(k))} -> {json.dumps(after[k])}" for k in sorted(after)
             if before.get(k) != after[k]]
    return "; ".join(moved) if moved else "no change"


def audit_csv(records: list[admin_pb2.AuditRecord]) -> str:
    """One row per record, newest first as listed; before/after as the JSON the authority stored."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(AUDIT_COLUMNS)
    for r in records:
        cells = {"at": _time(r.at), "changes": audit_changes(r.before_json, r.after_json),
                 "before": r.before_json, "after": r.after_json}
        writer.writerow([csv_cell(cells[c] if c in cells else getattr(r, c)) for c in AUDIT_COLUMNS])
    return out.getvalue()
