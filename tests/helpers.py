"""Small helpers for reading gRPC errors, building requests and serving fake HTTP peers in tests."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

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


def retry_info(error: grpc.RpcError) -> error_details_pb2.RetryInfo | None:
    return _detail(error, error_details_pb2.RetryInfo)


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


class ServedApp:
    """An ASGI app (a fake provider, a fake upstream) served by uvicorn on a local port, in a thread."""

    def __init__(self, app: Any, port: int):
        import uvicorn

        self.port = port
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                     access_log=False))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self):  # noqa: ANN201 - returns the subclass
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{type(self).__name__} on port {self.port} did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
