"""Domain errors of the credit authority, one per row of DESIGN.md's error table.

Storage and domain code raise these; the gRPC layer maps them to statuses.
"""

from __future__ import annotations


class CreditError(Exception):
    """Base of every domain error; `message` is safe to show to callers."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


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


class Unavailable(CreditError):
    pass


class InsufficientCredits(CreditError):
    """Not enough credits on the funding account (RESOURCE_EXHAUSTED / 402)."""

    def __init__(self, available: int, requested: int, funding: str):
        super().__init__(
            f"insufficient credits: {requested} millicredits requested, {available} available ({funding})"
        )
        self.available = available
        self.requested = requested
        self.funding = funding
