"""The inference service's only door to the credit authority (gRPC).

Maps authority statuses to REST errors, caches API-key checks briefly, and
makes sure a Commit after a successful LLM call is never lost: retries with
backoff, then the durable outbox, replayed in the background.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from credit.v1 import admin_pb2, admin_pb2_grpc, authority_pb2, authority_pb2_grpc, types_pb2
from credit_client.retry import RETRYABLE, RetryPolicy
from credit_service import logs

from . import acting, errors, ratelimits
from .admin_client import AdminCalls
from .outbox import CommitOutbox

log = logging.getLogger("inference_service")

Detail = TypeVar("Detail", error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo)

# Reserve, Release and Commit: 4 tries, waiting 0.1, 0.3 and 0.9 seconds between them.
RETRY = RetryPolicy(attempts=4, initial_backoff=0.1, max_backoff=0.9, multiplier=3, jitter=False)
MAX_TOKENS = 10**9  # the authority's bound on estimated and real token counts


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    user_id: str
    org_id: str
    is_service: bool


def funding_label(funding: types_pb2.Funding) -> str:
    return f"org:{funding.org_id}" if funding.kind == types_pb2.Funding.ORG else "individual"


def _detail(error: grpc.aio.AioRpcError, message_type: type[Detail]) -> Detail | None:
    """The first google.rpc detail of this type on an error, if the authority sent one."""
    status = rpc_status.from_call(error)
    for detail in status.details if status else ():
        if detail.Is(message_type.DESCRIPTOR):
            message = message_type()
            detail.Unpack(message)
            return message
    return None


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """The authority's google.rpc.ErrorInfo on an error, if it sent one."""
    return _detail(error, error_details_pb2.ErrorInfo)


def exhausted(error: grpc.aio.AioRpcError, tokens: int = 0) -> errors.ApiError:
    """RESOURCE_EXHAUSTED, told apart by its ErrorInfo reason: RATE_LIMITED is 429 (with the RetryInfo's
    delay), READ_TIMEOUT (a slow read cut by the authority's statement timeout) is 504, anything else is
    insufficient credits (402). `tokens`: what the refused Reserve estimated."""
    info = error_info(error)
    meta = dict(info.metadata) if info else {}
    if info is not None and info.reason == errors.READ_TIMEOUT:
        return errors.read_timeout(meta.get("timeout_seconds", ""))
    if info is not None and info.reason == ratelimits.RATE_LIMITED:
        retry = _detail(error, error_details_pb2.RetryInfo)
        return ratelimits.rate_limited(meta, retry.retry_delay.ToMilliseconds() if retry else None, tokens)
    return errors.InsufficientCredits(int(meta.get("available", "0")), int(meta.get("requested", "0")),
                                      meta.get("funding", ""))


def to_api_error(error: grpc.aio.AioRpcError, tokens: int = 0) -> errors.ApiError:
    code = error.code()
    if code in RETRYABLE:
        return errors.unavailable()
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return exhausted(error, tokens)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return errors.forbidden(error.details() or "not allowed")
    if code == grpc.StatusCode.NOT_FOUND:
        return errors.not_found(error.details() or "not found")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return errors.bad_request(error.details() or "invalid request")
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return errors.conflict(error.details() or "request id reused", "idempotency_key_reused")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return errors.conflict(error.details() or "already finalized", "already_finalized")
    log.error("authority answered %s: %s", code.name, error.details())
    return errors.unavailable("The credit authority failed; no model was called.")


def _bad_request_fields(error: grpc.aio.AioRpcError) -> set[str]:
    bad = _detail(error, error_details_pb2.BadRequest)
    return {v.field for v in bad.field_violations} if bad else set()


def commit_verdict(error: grpc.aio.AioRpcError, metadata: dict[str, Any]) -> str:
    """What a Commit's error means for that charge: "refused" (the authority's final answer for
    the reservation: unknown, or finalized otherwise), "resend" (only its metadata was refused:
    send the amount again without it), or "retry" (anything else: retry, then the outbox)."""
    code = error.code()
    if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
        return "refused"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return "resend" if "metadata" in _bad_request_fields(error) and metadata else "refused"
    return "retry"


def _without_metadata(metadata: dict[str, Any], error: grpc.aio.AioRpcError) -> dict[str, Any]:
    """The metadata to send after the authority refused `metadata`: a note of the refusal, then nothing."""
    if set(metadata) - {"metadata_refused"}:
        note = "".join(ch for ch in (error.details() or "refused") if ch.isprintable())[:200]
        return {"metadata_refused": note}
    return {}


def _commit_request(reservation_id: str, amount_mc: int, metadata: dict[str, Any],
                    tokens: int | None) -> authority_pb2.CommitRequest:
    """The Commit; `tokens` (the real count, when known) corrects the Reserve's estimate in the
    tokens-per-minute windows."""
    return authority_pb2.CommitRequest(reservation_id=reservation_id, amount_millicredits=amount_mc,
                                       metadata=to_struct(metadata),
                                       tokens=None if tokens is None else min(max(tokens, 0), MAX_TOKENS))


def to_struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update({k: v for k, v in values.items() if v is not None})
    return struct


@dataclass(frozen=True)
class Tls:
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""


def open_channel(addr: str, tls: Tls | None = None) -> grpc.aio.Channel:
    options = [("grpc.keepalive_time_ms", 30_000), ("grpc.initial_reconnect_backoff_ms", 200),
               ("grpc.max_reconnect_backoff_ms", 1_000)]
    if tls is None or not tls.ca_file:
        return grpc.aio.insecure_channel(addr, options=options)

    def read(path: str) -> bytes | None:
        return open(path, "rb").read() if path else None

    credentials = grpc.ssl_channel_credentials(read(tls.ca_file), read(tls.key_file), read(tls.cert_file))
    return grpc.aio.secure_channel(addr, credentials, options=options)


class AuthorityClient:
    def __init__(self, addr: str, token: str, *, timeout: float, key_cache_seconds: float, outbox: CommitOutbox,
                 tls: Tls | None = None):
        self._channel = open_channel(addr, tls)
        self._authority = authority_pb2_grpc.CreditAuthorityStub(self._channel)
        # CreditAdmin, typed; `admin` raises the authority's errors (the console maps them itself).
        self.admin = AdminCalls(admin_pb2_grpc.CreditAdminStub(self._channel), lambda: self._admin_md, timeout,
                                RETRY)
        self._admin_api = self.admin.with_errors(to_api_error)
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._timeout = timeout
        self._key_cache: dict[bytes, tuple[float, ApiKey | None]] = {}
        self._key_cache_seconds = key_cache_seconds
        self.outbox = outbox

    async def close(self) -> None:
        await self._channel.close()

    @property
    def _md(self) -> tuple:
        """The bearer token, and the request id of the REST call being served."""
        rid = logs.request_id.get()
        return self._metadata + ((("x-request-id", rid),) if rid else ())

    @property
    def _admin_md(self) -> tuple:
        """A CreditAdmin call's: also who it acts for and their address (acting.py), which the authority's
        audit log records; the hot path (Reserve, Commit, Release, GetBalance) sends only `_md`."""
        return self._md + acting.metadata()

    async def _call(self, method, request):
        try:
            return await method(request, metadata=self._md, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            raise to_api_error(error) from None

    async def verify_key(self, secret: str) -> ApiKey | None:
        digest = hashlib.sha256(secret.encode()).digest()
        cached = self._key_cache.get(digest)
        now = time.monotonic()
        if cached and cached[0] > now:
            return cached[1]
        response = await self._admin_api.verify_api_key(admin_pb2.VerifyApiKeyRequest(secret=secret))
        key = None
        until = now + self._key_cache_seconds
        if response.valid:
            k = response.key
            key = ApiKey(k.key_id, k.user_id, k.org_id, k.kind == admin_pb2.API_KEY_KIND_SERVICE)
            if k.HasField("expires_at"):  # never trusted past its expiry, whatever the cache window
                until = min(until, now + k.expires_at.ToNanoseconds() / 1e9 - time.time())
        if len(self._key_cache) > 10_000:
            self._key_cache.clear()
        self._key_cache[digest] = (until, key)
        return key

    async def reserve(self, **fields: Any) -> tuple[authority_pb2.ReserveResponse, bool]:
        """Reserves, retrying a lost answer with the same request_id (idempotent).

        Returns the hold and whether it is a replay of an *earlier request*
        (a replay answering one of our own retries is our hold, not a replay).
        """
        metadata = fields.pop("metadata", {})
        tokens = min(max(fields.pop("estimated_tokens", 0), 0), MAX_TOKENS)
        request = authority_pb2.ReserveRequest(metadata=to_struct(metadata), estimated_tokens=tokens, **fields)
        try:
            hold, attempt = await RETRY.call(self._authority.Reserve, request, metadata=self._md,
                                             timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            raise to_api_error(error, tokens) from None
        # A replay answering our own retry is our hold (still held); anything else is an earlier request.
        return hold, hold.replayed and (attempt == 0 or hold.status != "held")

    async def balance(self, user_id: str, org_id: str) -> authority_pb2.GetBalanceResponse:
        return await self._call(self._authority.GetBalance,
                                authority_pb2.GetBalanceRequest(user_id=user_id, org_id=org_id))

    async def usage(self, request: admin_pb2.QueryUsageRequest) -> admin_pb2.QueryUsageResponse:
        return await self._admin_api.query_usage(request)

    async def release(self, reservation_id: str, reason: str) -> None:
        """Best effort: a hold that cannot be released now expires by itself."""
        request = authority_pb2.ReleaseRequest(reservation_id=reservation_id, reason=reason[:256])
        try:
            await RETRY.call(self._authority.Release, request, metadata=self._md, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            log.warning("release of %s failed (%s); its TTL will free it", reservation_id, error.code().name)

    async def commit(self, reservation_id: str, amount_mc: int, metadata: dict[str, Any],
                     tokens: int | None = None) -> authority_pb2.CommitResponse | None:
        """Charges a call that was made. Ended only by the authority's final answer for this
        reservation; anything else is retried, then kept in the durable outbox (returns None).

        A refused metadata is dropped (the refusal noted) and the amount sent again; a
        reservation the authority refuses for good is kept in the outbox's refused table.
        """
        try:
            for delay in (*RETRY.delays(), None):  # its own loop: a Commit ends only on a final answer
                try:
                    return await self._authority.Commit(
                        _commit_request(reservation_id, amount_mc, metadata, tokens), metadata=self._md,
                        timeout=self._timeout)
                except grpc.aio.AioRpcError as error:
                    verdict = commit_verdict(error, metadata)
                    if verdict == "resend":
                        metadata = _without_metadata(metadata, error)
                        continue
                    if verdict == "refused":
                        self._refused(reservation_id, amount_mc, metadata, error)
                        return None
                    if delay is None:
                        break
                    await asyncio.sleep(delay)
        except asyncio.CancelledError:  # shutting down mid-commit: keep it for the next start
            self.outbox.add(reservation_id, amount_mc, metadata, tokens)
            raise
        except Exception:  # never lose a charge to an unexpected client error
            log.exception("commit of %s failed unexpectedly; queued in the outbox", reservation_id)
        self.outbox.add(reservation_id, amount_mc, metadata, tokens)
        log.warning("authority did not take the commit of %s; queued in the outbox", reservation_id)
        return None

    def _refused(self, reservation_id: str, amount_mc: int, metadata: dict[str, Any],
                 error: grpc.aio.AioRpcError) -> None:
        log.error("commit of %s refused for good: %s %s", reservation_id, error.code().name, error.details())
        self.outbox.refused(reservation_id, amount_mc, metadata, error.code().name, error.details() or "")

    async def replay_outbox(self) -> int:
        """One pass over the outbox; returns how many commits landed."""
        landed = 0
        for pending in self.outbox.pending():
            rid, amount, metadata = pending.reservation_id, pending.amount_mc, pending.metadata
            try:
                await self._authority.Commit(_commit_request(rid, amount, metadata, pending.tokens),
                                             metadata=self._md, timeout=self._timeout)
            except grpc.aio.AioRpcError as error:
                verdict = commit_verdict(error, metadata)
                if verdict == "resend":
                    self.outbox.replace_metadata(rid, _without_metadata(metadata, error))
                elif verdict == "refused":
                    self._refused(rid, amount, metadata, error)
                else:
                    self.outbox.attempted(rid)
                    if error.code() in RETRYABLE:
                        return landed  # still down: try again next pass
                continue
            self.outbox.done(rid)
            landed += 1
        return landed

    async def run_outbox(self, interval: float) -> None:
        while True:
            try:
                landed = await self.replay_outbox()
                if landed:
                    log.info("outbox: %d queued commits landed", landed)
            except Exception:
                log.exception("outbox replay failed")
            await asyncio.sleep(interval)
