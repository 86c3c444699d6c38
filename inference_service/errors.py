"""REST errors in OpenAI's body shape: {"error": {"message", "type", "code"}}."""

from __future__ import annotations

from typing import Any

from credit_service.money import format_credits


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str, code: str | None = None,
                 headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": None,
                          **self.extra}}


def bad_request(message: str, code: str = "invalid_request") -> ApiError:
    return ApiError(400, message, "invalid_request_error", code)


def unauthorized(message: str = "Invalid or missing API key. Send 'Authorization: Bearer <api key>'.") -> ApiError:
    return ApiError(401, message, "authentication_error", "invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"})


def forbidden(message: str) -> ApiError:
    return ApiError(403, message, "permission_error", "permission_denied")


def not_found(message: str, code: str = "not_found") -> ApiError:
    return ApiError(404, message, "invalid_request_error", code)


def conflict(message: str, code: str) -> ApiError:
    return ApiError(409, message, "invalid_request_error", code)


def unavailable(message: str = "The credit authority is unavailable; no model was called. Retry shortly.") -> ApiError:
    return ApiError(503, message, "service_unavailable", "authority_unavailable", headers={"Retry-After": "1"})


READ_TIMEOUT = "READ_TIMEOUT"  # the authority's ErrorInfo reason for a slow read past its statement timeout


def read_timeout(timeout_seconds: str) -> ApiError:
    """504: a report (usage, statement, forecast, list) ran past the authority's read timeout."""
    return ApiError(504, f"The report took longer than the {timeout_seconds} s the credit authority allows; "
                         "narrow the period or the filter.", "timeout_error", "read_timeout")


def upstream_failed(message: str) -> ApiError:
    return ApiError(502, message, "upstream_error", "upstream_failed")


class InsufficientCredits(ApiError):
    """402: the hold does not fit the funding account; the figures are kept as millicredits too, so a
    request sent with X-Fit-To-Budget can be fitted to what is available."""

    def __init__(self, available_mc: int, requested_mc: int, funding: str):
        super().__init__(
            402, f"Insufficient credits: this request may cost up to {format_credits(requested_mc)} credits, "
                 f"{format_credits(available_mc)} available ({funding}).",
            "insufficient_credits", "insufficient_credits",
            extra={"available": format_credits(available_mc), "requested": format_credits(requested_mc),
                   "funding": funding})
        self.available_mc = available_mc
        self.requested_mc = requested_mc


def max_cost_too_low(max_cost_mc: int, minimum_mc: int, least: str = "with max_tokens 1") -> ApiError:
    """402: not even the least form of the call (one output token; for a call priced by its input alone,
    the call as sent) fits the request's X-Max-Cost."""
    return ApiError(402, f"X-Max-Cost {format_credits(max_cost_mc)} is below the least this request may cost "
                         f"({format_credits(minimum_mc)} credits, {least}); nothing was held.",
                    "insufficient_credits", "max_cost_too_low",
                    extra={"max_cost": format_credits(max_cost_mc), "minimum": format_credits(minimum_mc)})
