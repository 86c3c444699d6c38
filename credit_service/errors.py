"""Domain errors of the credit authority, one per row of the error table in docs/contract.md.

Storage and domain code raise these; the gRPC layer maps them to statuses.
"""

from __future__ import annotations


class CreditError(Exception):
    """Base of every domain error; `message` is safe to show to callers. An outcome a caller must
    tell apart from others of the same status carries a `reason` (google.rpc.ErrorInfo.reason, with
    `details` as its metadata), so that no caller parses the message."""

    def __init__(self, message: str, reason: str = "", details: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.details = details or {}


class InvalidArgument(CreditError):
    """Bad input; `field` names the offending request field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.description = message


class NotFound(CreditError):
    pass


class PermissionDenied(CreditError):
    pass


class AlreadyExists(CreditError):
    pass


class FailedPrecondition(CreditError):
    pass


# ErrorInfo reasons: one per outcome a caller acts on differently.
INSUFFICIENT_CREDITS = "INSUFFICIENT_CREDITS"  # RESOURCE_EXHAUSTED: metadata available, requested, funding
ROLE_REQUIRED = "ROLE_REQUIRED"  # PERMISSION_DENIED: the token lacks the role the RPC needs
ALLOCATION_BELOW_COMMITTED = "ALLOCATION_BELOW_COMMITTED"  # FAILED_PRECONDITION: below used + held
ACCOUNT_TOTAL_LIMIT = "ACCOUNT_TOTAL_LIMIT"  # FAILED_PRECONDITION: a total would pass 2^62 − 1 mc
PAYMENTS_NOT_CONFIGURED = "PAYMENTS_NOT_CONFIGURED"  # FAILED_PRECONDITION: no STRIPE_WEBHOOK_SECRET set
RATE_LIMITED = "RATE_LIMITED"  # RESOURCE_EXHAUSTED + RetryInfo: metadata limit, value, scope, window
OUT_OF_SCOPE = "OUT_OF_SCOPE"  # PERMISSION_DENIED: a platform credential acting outside its orgs; metadata funding
READ_TIMEOUT = "READ_TIMEOUT"  # RESOURCE_EXHAUSTED: a slow read passed the read pool's statement timeout


class Unavailable(CreditError):
    pass


class ReadTimeout(CreditError):
    """A slow read (analytics, statements, forecasts, lists) cut by the read pool's statement timeout
    (RESOURCE_EXHAUSTED, reason READ_TIMEOUT, metadata timeout_seconds): not retried as it is, narrow it."""

    def __init__(self, timeout_seconds: float):
        super().__init__(f"the read took longer than the {timeout_seconds:g} s the authority allows a slow read; "
                         "narrow the period or the filter", READ_TIMEOUT, {"timeout_seconds": f"{timeout_seconds:g}"})


class InsufficientCredits(CreditError):
    """Not enough credits on the funding account (RESOURCE_EXHAUSTED / 402)."""

    def __init__(self, available: int, requested: int, funding: str):
        super().__init__(
            f"insufficient credits: {requested} millicredits requested, {available} available ({funding})"
        )
        self.available = available
        self.requested = requested
        self.funding = funding


class RateLimited(CreditError):
    """A rate or parallel limit refused a Reserve (RESOURCE_EXHAUSTED + RetryInfo / 429); nothing was held.
    `limit` names it (requests_per_minute, tokens_per_minute, max_parallel, credits_per_day,
    credits_per_month), `scope` whose it is (org, member, key, individual), `window` its period (minute,
    parallel, day, month); `retry_after_ms` is when the request would pass, unless `exceeds` (the request
    alone is larger than the limit)."""

    def __init__(self, limit: str, value: int, scope: str, window: str, retry_after_ms: int, exceeds: bool):
        what = "the request alone exceeds" if exceeds else "reached"
        super().__init__(f"rate limited: {what} the {scope}'s {limit.replace('_', ' ')} limit of {value}"
                         + ("" if exceeds else f"; retry in {retry_after_ms / 1000:.3f} s"),
                         RATE_LIMITED, {"limit": limit, "value": str(value), "scope": scope, "window": window,
                                        "retry_after_ms": str(retry_after_ms), "exceeds": str(exceeds).lower()})
        self.limit = limit
        self.value = value
        self.scope = scope
        self.window = window
        self.retry_after_ms = retry_after_ms
        self.exceeds = exceeds

    @classmethod
    def of(cls, refusal: dict) -> RateLimited:
        """From the refusal credit_limits_take answers."""
        return cls(refusal["limit"], int(refusal["value"]), refusal["scope"], refusal["window"],
                   int(refusal["retry_after_ms"]), bool(refusal.get("exceeds")))
