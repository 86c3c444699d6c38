"""A fault-injecting gRPC proxy in front of the real authority.

Every RPC is forwarded as raw bytes, with the caller's metadata and deadline,
to the real authority; its answer (or its error, with the rich error details
in the trailers) comes back unchanged. Only /credit.v1.CreditAuthority/Commit
is disturbed, at the configured rates:

* INTERNAL or UNAVAILABLE answered without forwarding (the Commit never landed);
* forwarded, then DEADLINE_EXCEEDED or UNAVAILABLE answered (the Commit landed,
  its answer was lost).

Tests that need one exact sequence instead push `Step`s to `proxy.script[method]`:
each call of that method takes the next step (delay, then an error before or after
forwarding, with rich details if given) before the random faults apply.
"""

from __future__ import annotations

import asyncio
import enum
import random
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2
from grpc_status import rpc_status

COMMIT = "/credit.v1.CreditAuthority/Commit"
_DROPPED_METADATA = ("user-agent",)


class Fault(enum.Enum):
    NONE = "none"
    INTERNAL = "internal"  # not forwarded
    UNAVAILABLE = "unavailable"  # not forwarded
    DEADLINE_AFTER = "deadline_after_forward"  # landed, answer lost
    UNAVAILABLE_AFTER = "unavailable_after_forward"  # landed, answer lost


ABORT = {Fault.INTERNAL: grpc.StatusCode.INTERNAL, Fault.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
         Fault.DEADLINE_AFTER: grpc.StatusCode.DEADLINE_EXCEEDED,
         Fault.UNAVAILABLE_AFTER: grpc.StatusCode.UNAVAILABLE}


@dataclass(frozen=True)
class CommitFaultRates:
    internal: float = 0.0
    unavailable: float = 0.0
    deadline_after: float = 0.0
    unavailable_after: float = 0.0

    def draw(self, rng: random.Random) -> Fault:
        roll = rng.random()
        for fault, rate in ((Fault.INTERNAL, self.internal), (Fault.UNAVAILABLE, self.unavailable),
                            (Fault.DEADLINE_AFTER, self.deadline_after),
                            (Fault.UNAVAILABLE_AFTER, self.unavailable_after)):
            if roll < rate:
                return fault
            roll -= rate
        return Fault.NONE


@dataclass(frozen=True)
class Step:
    """One scripted call: wait `delay` s, then answer `code` before forwarding (or after, when
    `after_forward`: the call landed, its answer is lost); `detail` goes in the rich status."""

    code: grpc.StatusCode | None = None
    after_forward: bool = False
    delay: float = 0.0
    detail: Message | None = None

    async def abort(self, context: grpc.aio.ServicerContext) -> None:
        assert self.code is not None
        message = f"scripted by the test proxy: {self.code.name}"
        status = status_pb2.Status(code=getattr(code_pb2, self.code.name), message=message)
        if self.detail is not None:
            packed = any_pb2.Any()
            packed.Pack(self.detail)
            status.details.append(packed)
        rich = rpc_status.to_status(status)
        await context.abort(rich.code, rich.details, rich.trailing_metadata)


PASS = Step()


def _forwardable(metadata: Sequence[tuple[str, str | bytes]] | None) -> tuple[tuple[str, str | bytes], ...]:
    return tuple((k, v) for k, v in metadata or () if not k.startswith((":", "grpc-")) and k not in _DROPPED_METADATA)


def _trailers(metadata: Sequence[tuple[str, str | bytes]] | None) -> tuple[tuple[str, str | bytes], ...]:
    """The error's trailers worth passing on: the rich details and custom entries."""
    return tuple((k, v) for k, v in metadata or () if k == "grpc-status-details-bin" or not k.startswith("grpc-"))


Behaviour = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


class _Generic(grpc.GenericRpcHandler):
    def __init__(self, behaviour: Callable[[str], Behaviour]):
        self._behaviour = behaviour

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(self._behaviour(handler_call_details.method))


class FaultProxy:
    """`addr` is what the inference service dials; `target` is the real authority."""

    def __init__(self, target: str, rates: CommitFaultRates, seed: int):
        self.target = target
        self.rates = rates
        self.injected: Counter[Fault] = Counter()
        self.forwarded: Counter[str] = Counter()
        self.script: defaultdict[str, deque[Step]] = defaultdict(deque)
        self._rng = random.Random(seed)
        self._server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None
        self._calls: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}
        self.port = 0

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> FaultProxy:
        self._channel = grpc.aio.insecure_channel(self.target, options=[
            ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 500)])
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((_Generic(self._behaviour),))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return self

    def faults_off(self) -> None:
        self.rates = CommitFaultRates()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
        if self._channel is not None:
            await self._channel.close()

    def _behaviour(self, method: str) -> Behaviour:
        async def forward_with_faults(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            if self.script[method]:
                return await self._scripted(self.script[method].popleft(), method, request, context)
            fault = self.rates.draw(self._rng) if method == COMMIT else Fault.NONE
            if fault in (Fault.INTERNAL, Fault.UNAVAILABLE):
                self.injected[fault] += 1
                await context.abort(ABORT[fault], f"injected by the test proxy: {fault.value}")
            response = await self._forward(method, request, context)
            if fault is not Fault.NONE:
                self.injected[fault] += 1
                await context.abort(ABORT[fault], f"injected by the test proxy: {fault.value}")
            return response

        return forward_with_faults

    async def _scripted(self, step: Step, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(step.delay)
        if step.code is not None and not step.after_forward:
            await step.abort(context)
        response = await self._forward(method, request, context)
        if step.code is not None:
            await step.abort(context)
        return response

    async def _forward(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        assert self._channel is not None
        call = self._calls.get(method)
        if call is None:  # no (de)serializers: raw bytes both ways
            call = self._calls[method] = self._channel.unary_unary(method)
        self.forwarded[method] += 1
        try:
            return await call(request, metadata=_forwardable(context.invocation_metadata()),
                              timeout=context.time_remaining())
        except grpc.aio.AioRpcError as error:
            await context.abort(error.code(), error.details() or "", _trailers(error.trailing_metadata()))
            raise  # unreachable: abort raises
