"""Small helpers for reading gRPC errors and building requests in tests."""

from __future__ import annotations

import uuid

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from credit.v1 import authority_pb2


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    status = rpc_status.from_call(error)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def bad_request(error: grpc.RpcError) -> error_details_pb2.BadRequest | None:
    status = rpc_status.from_call(error)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            info = error_details_pb2.BadRequest()
            detail.Unpack(info)
            return info
    return None


def reserve_request(user_id: str, amount: int, org_id: str = "", request_id: str | None = None,
                    **kwargs) -> authority_pb2.ReserveRequest:
    return authority_pb2.ReserveRequest(request_id=request_id or uuid.uuid4().hex, user_id=user_id,
                                        org_id=org_id, amount_millicredits=amount,
                                        service_type=kwargs.pop("service_type", "llm_inference"),
                                        service_name=kwargs.pop("service_name", "demo-chat"), **kwargs)
