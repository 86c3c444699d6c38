"""CSV exports: the one rule for a cell a spreadsheet shows but never runs, and a statement as one table,
written the same by the console's export and by `creditctl statement --csv`."""

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
