"""Usage analytics over the attribution rows: filtered records, totals, and fixed groupings."""

from __future__ import annotations

from datetime import datetime

from ..model import UsageGroup, UsagePage, UsageRecord
from .common import Queries

USAGE_FILTER = """ WHERE ($1::text IS NULL OR org_id = $1)
                      AND ($2::text IS NULL OR user_id = $2)
                      AND ($3::text IS NULL OR service_type = $3)
                      AND ($4::text IS NULL OR service_name = $4)
                      AND ($5::timestamptz IS NULL OR created_at >= $5)
                      AND ($6::timestamptz IS NULL OR created_at < $6)
                      AND (NOT $7::boolean OR org_id IS NULL)"""
# One fixed statement per grouping; the request picks one by enum, never by text.
USAGE_GROUP_SQL = {
    group: f"SELECT {key} AS key, count(*) AS requests, sum(credits_used)::BIGINT AS credits_used"
           " FROM usage_attribution" + USAGE_FILTER + " GROUP BY 1 ORDER BY 3 DESC, 1 LIMIT $8"
    for group, key in {
        "user": "user_id",
        "model": "service_name",
        "service_type": "service_type",
        "day": "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    }.items()
}
USAGE_TOTALS_SQL = ("SELECT count(*) AS n, coalesce(sum(credits_used), 0)::BIGINT AS mc FROM usage_attribution"
                    + USAGE_FILTER)
USAGE_RECORDS_SQL = ("SELECT * FROM usage_attribution" + USAGE_FILTER
                     + " ORDER BY created_at DESC, attribution_id DESC LIMIT $8")


class UsageQueries(Queries):
    async def query_usage(self, *, org_id: str | None, user_id: str | None, service_type: str | None,
                          model: str | None, start: datetime | None, end: datetime | None,
                          group_by: str | None, limit: int, individual_only: bool = False) -> UsagePage:
        """The newest `limit` records (group_by None) or the top `limit` groups, with the totals of all
        rows the filter matches (`individual_only`: only charges to individual balances)."""
        filters = (org_id, user_id, service_type, model, start, end, individual_only)
        async with self.reading() as conn:
            totals = await conn.fetchrow(USAGE_TOTALS_SQL, *filters)
            if group_by is None:
                rows = await conn.fetch(USAGE_RECORDS_SQL, *filters, limit)
                return UsagePage([UsageRecord(**dict(r)) for r in rows], [], totals["mc"], totals["n"])
            rows = await conn.fetch(USAGE_GROUP_SQL[group_by], *filters, limit)
            return UsagePage([], [UsageGroup(**dict(r)) for r in rows], totals["mc"], totals["n"])
