"""The domain's types of money coming in and accounted for: purchases through Stripe Checkout, statements
and forecasts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

# ---- purchases (credit_service/payments.py) ---------------------------------

PURCHASE_STATUSES = ("pending", "paid", "partially_refunded", "refunded", "expired")


@dataclass(frozen=True)
class Purchase:
    """One Stripe Checkout Session and what it did to its org's pool."""

    org_id: str
    session_id: str
    status: str  # one of PURCHASE_STATUSES
    credits_mc: int
    amount_minor: int
    currency: str
    refunded_mc: int
    overdrawn: bool
    created_by: str
    created_at: datetime
    paid_at: datetime | None
    payment_intent: str | None
    refunded_minor: int = 0


@dataclass(frozen=True)
class PaidSession:
    """A Checkout Session Stripe says is paid, priced by the authority (credits_mc from amount_minor)."""

    org_id: str
    session_id: str
    credits_mc: int
    amount_minor: int
    currency: str
    payment_intent: str | None
    created_by: str


@dataclass(frozen=True)
class PaymentOutcome:
    """What one webhook event did: credited, refunded, expired, already_applied, not_paid or ignored."""

    event_id: str
    event_type: str
    outcome: str
    purchase: Purchase | None = None


# ---- statements and forecasts (credit_service/reports.py) -------------------------


@dataclass(frozen=True)
class Account:
    """Which account a statement or forecast is about: the pool (org_id alone), a member's allocation (both)
    or an individual balance (user_id alone)."""

    org_id: str | None
    user_id: str | None

    @property
    def scope(self) -> str:
        if self.user_id is None:
            return "pool"
        return "individual" if self.org_id is None else "allocation"


@dataclass(frozen=True)
class StatementLine:
    """One ledger entry that moved the balance other than by usage (amount: + adds, − takes)."""

    at: datetime
    kind: str  # purchase, top_up, grant, refund, adjustment, allocation
    amount_mc: int
    source: str
    reference: str
    note: str


@dataclass(frozen=True)
class StatementUsage:
    key: str  # model name or user id
    requests: int
    credits_used_mc: int


@dataclass(frozen=True)
class Statement:
    """An account over [start, end), from the ledger: closing = opening + credits_in + adjustments +
    allocation_changes − usage. Lines are capped (the sums are not)."""

    account: Account
    start: datetime
    end: datetime
    opening_mc: int
    closing_mc: int
    credits_in_mc: int
    adjustments_mc: int
    allocation_changes_mc: int
    usage_mc: int
    credits_in: list[StatementLine]
    adjustments: list[StatementLine]
    allocation_changes: list[StatementLine]
    usage_by_model: list[StatementUsage]
    usage_by_member: list[StatementUsage]


@dataclass(frozen=True)
class WindowUsage:
    """An account now: credits not yet used, and usage charged in the trailing window (storage's answer)."""

    user_id: str | None
    remaining_mc: int
    used_in_window_mc: int


@dataclass(frozen=True)
class ForecastLine:
    user_id: str | None
    remaining_mc: int
    used_in_window_mc: int
    burn_rate_mc_per_day: int
    runs_out_at: datetime | None


@dataclass(frozen=True)
class Forecast:
    account: Account
    window_days: int
    computed_at: datetime
    total: ForecastLine
    members: list[ForecastLine]
