"""Small helpers for reading gRPC errors and building requests in tests."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from credit.v1 import authority_pb2


def _detail(error: grpc.RpcError, message_type):
    """The first google.rpc detail of this type in the error's status, or None."""
    status = rpc_status.from_call(error)
    for detail in status.details if status else ():
        if detail.Is(message_type.DESCRIPTOR):
            found = message_type()
            detail.Unpack(found)
            return found
    return None


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    return _detail(error, error_details_pb2.ErrorInfo)


def bad_request(error: grpc.RpcError) -> error_details_pb2.BadRequest | None:
    return _detail(error, error_details_pb2.BadRequest)


def reserve_request(user_id: str, amount: int, org_id: str = "", request_id: str | None = None,
                    **kwargs) -> authority_pb2.ReserveRequest:
    return authority_pb2.ReserveRequest(request_id=request_id or uuid.uuid4().hex, user_id=user_id,
                                        org_id=org_id, amount_millicredits=amount,
                                        service_type=kwargs.pop("service_type", "llm_inference"),
                                        service_name=kwargs.pop("service_name", "demo-chat"), **kwargs)


ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "clients" / "node"


def node_modules() -> Path:
    """clients/node/node_modules (the Node client's packages and buf), installed by
    `make node-deps` (npm ci from the lockfile) if missing."""
    if not (NODE_DIR / "node_modules" / ".installed").exists():
        subprocess.run(["make", "-s", "node-deps"], cwd=ROOT, check=True, timeout=600)
    return NODE_DIR / "node_modules"
