"""A slow read cut by the read pool's statement timeout: the authority's status (RESOURCE_EXHAUSTED with
ErrorInfo READ_TIMEOUT) and what the REST service makes of it (504 read_timeout, never 402 or 429)."""

from __future__ import annotations

import grpc
from grpc.aio import AioRpcError, Metadata

from credit_service.errors import READ_TIMEOUT, ReadTimeout
from credit_service.server.rpc import status_for
from inference_service.authority_client import error_info, to_api_error


def as_received(timeout_seconds: float) -> AioRpcError:
    status = status_for(ReadTimeout(timeout_seconds))
    return AioRpcError(status.code, Metadata(), Metadata(*status.trailing_metadata), status.details)


def test_a_read_timeout_is_resource_exhausted_with_its_own_reason() -> None:
    error = as_received(2.5)
    info = error_info(error)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info is not None and info.reason == READ_TIMEOUT
    assert dict(info.metadata) == {"timeout_seconds": "2.5"}


def test_the_rest_service_answers_a_read_timeout_504() -> None:
    api_error = to_api_error(as_received(10))
    assert (api_error.status, api_error.code, api_error.type) == (504, "read_timeout", "timeout_error")
    assert "10 s" in api_error.message
