"""The client of ``credit.v1.CreditAuthority``: results, :class:`CreditClient` and :class:`Hold`."""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf import struct_pb2

from ._proto import authority_pb2, authority_pb2_grpc, types_pb2
from .errors import AlreadyFinalized, CommitFailed, CreditClientError, error_from_rpc
from .retry import RetryPolicy

log = logging.getLogger("credit_client")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_T = TypeVar("_T")


# ---- results ---------------------------------------------------------------


@dataclass(frozen=True)
class Funding:
    """The account that pays: ``kind`` is "org" or "individual"."""

    kind: str
    org_id: str = ""

    @classmethod
    def from_proto(cls, message: types_pb2.Funding) -> Funding:
        if message.kind == types_pb2.Funding.ORG:
            return cls("org", message.org_id)
        return cls("individual", "")

    def __str__(self) -> str:  # the same label as ErrorInfo's "funding"
        return f"org:{self.org_id}" if self.kind == "org" else "individual"


@dataclass(frozen=True)
class CheckResult:
    allowed: bool
    funding: Funding
    available_millicredits: int


@dataclass(frozen=True)
class Balance:
    funding: Funding
    limit_millicredits: int
    used_millicredits: int
    held_millicredits: int
    available_millicredits: int


@dataclass(frozen=True)
class Reservation:
    reservation_id: str
    request_id: str
    funding: Funding
    reserved_millicredits: int
    available_millicredits: int
    expires_at: datetime | None
    replayed: bool
    status: str


@dataclass(frozen=True)
class Charge:
    reservation_id: str
    charged_millicredits: int
    available_millicredits: int
    overrun: bool
    late: bool
    funding: Funding


def _struct(values: Mapping[str, Any] | None) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    if values:
        struct.update(dict(values))
    return struct


def _reason(text: str) -> str:
    """A Release reason the authority accepts: no control characters, at most 256 characters."""
    return _CONTROL.sub(" ", text)[:256]


# ---- the client --------------------------------------------------------------


class CreditClient:
    """Async client of ``credit.v1.CreditAuthority`` (grpc.aio).

    address: "host:port". token: a bearer token with the spend role.
    credentials: ``grpc.ssl_channel_credentials(...)`` for TLS; plaintext when None.
    channel: an existing ``grpc.aio.Channel`` to use instead (not closed by :meth:`close`).
    timeout: deadline of each attempt, in seconds.
    attempts: tries per call for UNAVAILABLE/DEADLINE_EXCEEDED (1 = no retry).
    initial_backoff/max_backoff: exponential backoff between tries (full jitter), in seconds.
    The three make :attr:`retry`, the call's :class:`~credit_client.retry.RetryPolicy`.
    """

    def __init__(self, address: str = "", token: str = "", *, credentials: grpc.ChannelCredentials | None = None,
                 channel: grpc.aio.Channel | None = None, timeout: float = 5.0, attempts: int = 5,
                 initial_backoff: float = 0.1, max_backoff: float = 2.0,
                 options: list[tuple[str, Any]] | None = None):
        if not token:
            raise ValueError("token is required (a bearer token with the spend role)")
        if channel is None and not address:
            raise ValueError("address (host:port) or channel is required")
        self.retry = RetryPolicy(attempts, initial_backoff, max_backoff)
        self._owns_channel = channel is None
        if channel is None:
            options = options or [("grpc.keepalive_time_ms", 30_000), ("grpc.initial_reconnect_backoff_ms", 200),
                                  ("grpc.max_reconnect_backoff_ms", 2_000)]
            channel = (grpc.aio.secure_channel(address, credentials, options=options) if credentials
                       else grpc.aio.insecure_channel(address, options=options))
        self._channel = channel
        self._stub = authority_pb2_grpc.CreditAuthorityStub(channel)
        self._metadata = (("authorization", f"Bearer {token}"),)
        self.timeout = timeout

    @property
    def attempts(self) -> int:
        return self.retry.attempts

    @attempts.setter
    def attempts(self, value: int) -> None:
        self.retry = replace(self.retry, attempts=value)

    @property
    def initial_backoff(self) -> float:
        return self.retry.initial_backoff

    @initial_backoff.setter
    def initial_backoff(self, value: float) -> None:
        self.retry = replace(self.retry, initial_backoff=value)

    @property
    def max_backoff(self) -> float:
        return self.retry.max_backoff

    @max_backoff.setter
    def max_backoff(self, value: float) -> None:
        self.retry = replace(self.retry, max_backoff=value)

    @classmethod
    def from_env(cls, **kwargs: Any) -> CreditClient:
        """From CREDIT_AUTHORITY_ADDR (default 127.0.0.1:50051) and CREDIT_SERVICE_TOKEN."""
        return cls(os.environ.get("CREDIT_AUTHORITY_ADDR", "127.0.0.1:50051"),
                   os.environ.get("CREDIT_SERVICE_TOKEN", ""), **kwargs)

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> CreditClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _call(self, method: Callable[..., Awaitable[_T]], request: Any) -> _T:
        try:
            response, _ = await self.retry.call(method, request, metadata=self._metadata, timeout=self.timeout)
        except grpc.aio.AioRpcError as error:
            raise error_from_rpc(error) from None
        return response

    # ---- the RPCs ----------------------------------------------------------

    async def check(self, user_id: str, amount_millicredits: int, org_id: str = "") -> CheckResult:
        """Read only: would ``amount_millicredits`` fit now? (Not enough is ``allowed=False``, not an error.)"""
        response = await self._call(self._stub.Check, authority_pb2.CheckRequest(
            user_id=user_id, org_id=org_id, amount_millicredits=amount_millicredits))
        return CheckResult(response.allowed, Funding.from_proto(response.funding), response.available_millicredits)

    async def balance(self, user_id: str, org_id: str = "") -> Balance:
        """Limit, used, held and available of the account that funds ``user_id`` (in ``org_id``)."""
        response = await self._call(self._stub.GetBalance,
                                    authority_pb2.GetBalanceRequest(user_id=user_id, org_id=org_id))
        return Balance(Funding.from_proto(response.funding), response.limit_millicredits,
                       response.used_millicredits, response.held_millicredits, response.available_millicredits)

    async def reserve(self, *, user_id: str, amount_millicredits: int, request_id: str | None = None,
                      org_id: str = "", service_type: str = "llm_inference", service_name: str = "",
                      ttl_seconds: int = 0, metadata: Mapping[str, Any] | None = None, api_key_id: str = "",
                      estimated_tokens: int = 0) -> Reservation:
        """Places a hold; retries reuse ``request_id`` (a new UUID when not given). The rate limits of the
        org, member or user apply, and of ``api_key_id`` when given; ``estimated_tokens`` counts against
        tokens-per-minute limits (raises :class:`RateLimited` when a limit refuses)."""
        request_id = request_id or uuid.uuid4().hex
        response = await self._call(self._stub.Reserve, authority_pb2.ReserveRequest(
            request_id=request_id, user_id=user_id, org_id=org_id, amount_millicredits=amount_millicredits,
            ttl_seconds=ttl_seconds, service_type=service_type, service_name=service_name,
            metadata=_struct(metadata), api_key_id=api_key_id, estimated_tokens=estimated_tokens))
        expires = (response.expires_at.ToDatetime(timezone.utc) if response.HasField("expires_at") else None)
        return Reservation(response.reservation_id, request_id, Funding.from_proto(response.funding),
                           response.reserved_millicredits, response.available_millicredits, expires,
                           response.replayed, response.status or "held")

    async def commit(self, reservation_id: str, amount_millicredits: int,
                     metadata: Mapping[str, Any] | None = None, tokens: int | None = None) -> Charge:
        """Charges the actual amount (may exceed the hold: charged in full, flagged overrun); ``tokens``,
        the real count, corrects the Reserve's estimate in tokens-per-minute limits."""
        response = await self._call(self._stub.Commit, authority_pb2.CommitRequest(
            reservation_id=reservation_id, amount_millicredits=amount_millicredits, metadata=_struct(metadata),
            tokens=tokens))
        return Charge(reservation_id, response.charged_millicredits, response.available_millicredits,
                      response.overrun, response.late, Funding.from_proto(response.funding))

    async def release(self, reservation_id: str, reason: str = "") -> None:
        """Voids a held reservation; nothing is charged."""
        await self._call(self._stub.Release,
                         authority_pb2.ReleaseRequest(reservation_id=reservation_id, reason=_reason(reason)))

    def hold(self, *, user_id: str, amount_millicredits: int, request_id: str | None = None, org_id: str = "",
             service_type: str = "llm_inference", service_name: str = "", ttl_seconds: int = 0,
             metadata: Mapping[str, Any] | None = None, api_key_id: str = "", estimated_tokens: int = 0) -> Hold:
        """An async context manager: Reserve on enter, Commit on success, Release on exception."""
        return Hold(self, dict(user_id=user_id, amount_millicredits=amount_millicredits,
                               request_id=request_id or uuid.uuid4().hex, org_id=org_id,
                               service_type=service_type, service_name=service_name, ttl_seconds=ttl_seconds,
                               metadata=metadata, api_key_id=api_key_id, estimated_tokens=estimated_tokens))


class Hold:
    """One billed operation; see :meth:`CreditClient.hold` and the module docstring."""

    def __init__(self, client: CreditClient, reserve_args: dict[str, Any]):
        self._client = client
        self._reserve_args = reserve_args
        self.request_id: str = reserve_args["request_id"]
        self.reservation: Reservation | None = None
        self.actual_millicredits: int | None = None
        self.commit_metadata: dict[str, Any] = {}
        self.tokens: int | None = None  # the real token count, sent with the Commit
        self.release_reason: str | None = None
        self.result: Charge | None = None  # set after a successful Commit
        self.released = False

    @property
    def reservation_id(self) -> str:
        if self.reservation is None:
            raise RuntimeError("the hold is not placed yet (use it inside `async with`)")
        return self.reservation.reservation_id

    @property
    def reserved_millicredits(self) -> int:
        return self.reservation.reserved_millicredits if self.reservation else 0

    @property
    def funding(self) -> Funding | None:
        return self.reservation.funding if self.reservation else None

    def commit(self, amount_millicredits: int, metadata: Mapping[str, Any] | None = None,
               tokens: int | None = None) -> None:
        """Sets the actual amount to charge when the block ends (and usage metadata for the attribution row,
        and the real token count for tokens-per-minute limits)."""
        if isinstance(amount_millicredits, bool) or not isinstance(amount_millicredits, int):
            raise TypeError("amount_millicredits must be an int (millicredits)")
        if amount_millicredits < 0:
            raise ValueError("amount_millicredits must be >= 0")
        self.actual_millicredits = amount_millicredits
        self.release_reason = None
        if tokens is not None:
            self.tokens = tokens
        if metadata:
            self.commit_metadata.update(metadata)

    def release(self, reason: str = "released by the caller") -> None:
        """Voids the hold when the block ends instead of charging (nothing is charged)."""
        self.release_reason = reason
        self.actual_millicredits = None

    async def __aenter__(self) -> Hold:
        reservation = await self._client.reserve(**self._reserve_args)
        if reservation.replayed and reservation.status != "held":
            raise AlreadyFinalized(self.request_id, reservation)
        self.reservation = reservation
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        if exc is not None:
            await self._release_quietly(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            return False  # the block's exception propagates
        if self.release_reason is not None:
            await self._client.release(self.reservation_id, self.release_reason)
            self.released = True
            return False
        amount = self.actual_millicredits
        assert self.reservation is not None  # __aenter__ reserved
        if amount is None:  # documented choice: the usage happened, charge the worst case that was held
            amount = self.reservation.reserved_millicredits
        try:
            self.result = await self._client.commit(self.reservation_id, amount, self.commit_metadata or None,
                                                    self.tokens)
        except CreditClientError as error:
            raise CommitFailed(error, self.reservation_id, amount) from error
        return False

    async def _release_quietly(self, reason: str) -> None:
        """Releases after the block failed, never masking the block's own exception."""
        try:
            await self._client.release(self.reservation_id, reason)
            self.released = True
        except CreditClientError as error:  # the sweeper releases the hold when it expires
            expires = self.reservation.expires_at if self.reservation else "its TTL"
            log.warning("could not release reservation %s (%s); it expires at %s", self.reservation_id,
                        error.message, expires)
