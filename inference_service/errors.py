"""REST errors in OpenAI's body shape: {"error": {"message", "type", "code"}}."""

from __future__ import annotations

from typing import Any


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


def upstream_failed(message: str) -> ApiError:
    return ApiError(502, message, "upstream_error", "upstream_failed")
