"""The OpenAI-compatible REST front door. Every billed call is
estimate → Reserve → LiteLLM → Commit (or Release), through the authority.

Fail closed: if the authority cannot be reached, no model is called (503).
Never lose usage: once a model answered, the Commit is retried, queued in a
durable outbox if need be, and a stream cut by the client is still charged.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from google.protobuf.json_format import MessageToDict
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from credit.v1 import admin_pb2
from credit_service import logs
from credit_service.money import format_credits

from . import catalogue, errors, metrics
from .authority_client import ApiKey, AuthorityClient, Tls, funding_label
from .billing import Pricing
from .console import console_router
from .edge import Edge
from .metering import Billing, Meter
from .outbox import CommitOutbox
from .quiet_litellm import skip_unobserved_success_logging
from .schemas import ChatCompletionRequest, ImageGenerationRequest
from .settings import Settings

log = logging.getLogger("inference_service")

_CLIENT_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,100}")
_USER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorBody(BaseModel):
    """OpenAI's error body."""

    error: ErrorDetail


@dataclass(frozen=True)
class Caller:
    key: ApiKey
    org_header: str


class AuthFailures:
    """Failed key checks per client address in a sliding window: past the limit, 429."""

    def __init__(self, limit: int, window: float):
        self._limit = limit
        self._window = window
        self._seen: dict[str, deque[float]] = {}

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._seen.setdefault(client, deque())
        while times and times[0] <= now - self._window:
            times.popleft()
        return times

    def record(self, client: str) -> None:
        now = time.monotonic()
        self._recent(client, now).append(now)
        if len(self._seen) > 100_000:  # bound memory under a spray of addresses
            self._seen = {c: t for c, t in self._seen.items() if t and t[-1] > now - self._window}

    def blocked_for(self, client: str) -> int:
        """Seconds until this client may try again; 0 when not blocked."""
        if client not in self._seen:
            return 0
        now = time.monotonic()
        times = self._recent(client, now)
        if len(times) < self._limit:
            return 0
        return max(int(times[-self._limit] + self._window - now) + 1, 1)


class InferenceService:
    """Holds what the routes share: settings, catalogue, pricing, the authority client."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.models = catalogue.load(settings.models_file)
        self.pricing = Pricing(settings.credits_per_usd, settings.markup, settings.max_output_tokens)
        self._client: AuthorityClient | None = None
        self._meter: Meter | None = None
        self.background: set[asyncio.Task] = set()
        self.failures = AuthFailures(settings.auth_failure_limit, settings.auth_failure_window_seconds)

    async def start(self) -> None:
        outbox = CommitOutbox(self.settings.outbox_path)
        tls = Tls(self.settings.authority_tls_ca_file, self.settings.authority_tls_cert_file,
                  self.settings.authority_tls_key_file)
        self._client = AuthorityClient(self.settings.authority_addr, self.settings.service_token,
                                      timeout=self.settings.authority_timeout_seconds,
                                      key_cache_seconds=self.settings.key_cache_seconds, outbox=outbox, tls=tls)
        self._meter = Meter(self._client, self.pricing, self.settings)
        self.spawn(self.client.run_outbox(self.settings.outbox_replay_seconds))

    @property
    def client(self) -> AuthorityClient:
        if self._client is None:
            raise RuntimeError("the service has not started")
        return self._client

    @property
    def meter(self) -> Meter:
        if self._meter is None:
            raise RuntimeError("the service has not started")
        return self._meter

    async def stop(self) -> None:
        if self._meter is not None:  # settlements in progress finish (or reach the outbox) first
            await self._meter.drain(timeout=10)
        for task in self.background:
            task.cancel()
        if self._client:
            await self._client.close()
            self._client.outbox.close()

    def spawn(self, coro, name: str = "task") -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    def model(self, name: str, mode: str) -> catalogue.ModelEntry:
        entry = self.models.get(name)
        if entry is None or entry.mode != mode:
            raise errors.not_found(f"The model '{name}' does not exist or is not available here.",
                                   "model_not_found")
        return entry

    # ---- who pays --------------------------------------------------------

    async def authenticate(self, request: Request) -> Caller:
        client = request.client.host if request.client else "unknown"
        retry_after = self.failures.blocked_for(client)
        if retry_after:
            raise errors.ApiError(429, "Too many failed authentication attempts from this address; slow down.",
                                  "rate_limit_error", "too_many_auth_failures",
                                  headers={"Retry-After": str(retry_after)})
        header = request.headers.get("authorization", "")
        scheme, _, secret = header.partition(" ")
        secret = secret.strip()
        key = None
        if scheme.lower() == "bearer" and secret and len(secret) <= 256:
            key = await self.client.verify_key(secret)
        if key is None:
            self.failures.record(client)
            raise errors.unauthorized()
        org_header = request.headers.get("openai-organization", "").strip()
        if org_header and not _USER_ID.fullmatch(org_header):
            raise errors.bad_request("OpenAI-Organization must be an organization id", "invalid_organization")
        return Caller(key, org_header)

    def billing(self, caller: Caller, request: Request, body_user: str | None) -> Billing:
        key = caller.key
        org = key.org_id
        if caller.org_header:
            if key.org_id and caller.org_header != key.org_id:
                raise errors.forbidden(f"This API key belongs to organization '{key.org_id}'; "
                                       f"it cannot spend in '{caller.org_header}'.")
            org = caller.org_header
        client_id = request.headers.get("idempotency-key") or request.headers.get("x-request-id")
        if client_id is not None and not _CLIENT_REQUEST_ID.fullmatch(client_id):
            raise errors.bad_request("Idempotency-Key / X-Request-Id must be 1-100 printable ASCII characters "
                                     "without spaces", "invalid_request_id")
        request_id = client_id or f"req_{uuid.uuid4().hex}"
        request.state.request_id = request_id
        logs.request_id.set(request_id)  # sent to the authority as gRPC metadata, logged by both
        user_id = key.user_id
        if key.is_service and body_user:
            # An org service key may act for members of its own organization; the
            # authority refuses (403) anyone who is not a member of that org.
            if not _USER_ID.fullmatch(body_user):
                raise errors.bad_request("'user' must be a user id when sent with a service key", "invalid_user")
            user_id, org = body_user, key.org_id
        return Billing(user_id, org, body_user, request_id, f"{key.key_id}:{request_id}")

    async def chat(self, caller: Caller, body: ChatCompletionRequest,
                   request: Request) -> JSONResponse | StreamingResponse:
        entry = self.model(body.model, "chat")
        return await self.meter.chat(entry, body, self.billing(caller, request, body.user))

    async def images(self, caller: Caller, body: ImageGenerationRequest, request: Request) -> JSONResponse:
        entry = self.model(body.model, "image_generation")
        return await self.meter.images(entry, body, self.billing(caller, request, body.user))


def _client_request_id(reserve_id: str) -> str:
    """The id the client saw: Reserve request ids are "<key id>:<client id>"."""
    key_id, sep, client_id = reserve_id.partition(":")
    return client_id if sep and key_id.startswith("ck_") else reserve_id


def _credits_fields(prefix: str, millicredits: int) -> dict[str, Any]:
    return {prefix: format_credits(millicredits), f"{prefix}_millicredits": millicredits}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    skip_unobserved_success_logging()
    service = InferenceService(settings)

    async def lifespan(app: FastAPI):
        await service.start()
        yield
        await service.stop()

    app = FastAPI(title="LLM inference, billed by the credit authority", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible endpoints under /api/v1/llm. Every billed response carries "
                              "X-Cost-Incurred, X-Credits-Remaining (credits), X-Request-Id and X-Funding-Source.")
    app.state.service = service

    app.add_middleware(Edge, max_body_bytes=settings.max_body_bytes)

    @app.exception_handler(errors.ApiError)
    async def api_error(request: Request, exc: errors.ApiError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        # The deepest location names the field best (a union's first branch says only "not a string").
        first = max(exc.errors(), key=lambda e: len(e.get("loc", ())), default={"loc": (), "msg": "invalid request"})
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
        return JSONResponse(errors.bad_request(message).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        body = {"error": {"message": str(exc.detail), "type": "invalid_request_error", "code": kind, "param": None}}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    async def caller(request: Request) -> Caller:
        return await service.authenticate(request)

    billed: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody, "description": text} for code, text in (
        (400, "bad request"), (401, "missing or invalid API key"), (402, "insufficient credits"),
        (403, "not allowed (organization, service key scope)"), (404, "unknown model"),
        (409, "Idempotency-Key already used"), (413, "body too large"), (415, "not JSON"),
        (429, "too many failed authentication attempts"), (502, "model provider failed; hold released"),
        (503, "credit authority unavailable; no model called"))}
    reads: dict[int | str, dict[str, Any]] = {code: billed[code] for code in (400, 401, 403, 404, 429, 503)}

    @app.post("/api/v1/llm/chat/completions", tags=["llm"], responses=billed)
    async def chat_completions(body: ChatCompletionRequest, request: Request, who: Caller = Depends(caller)):
        """OpenAI chat completions, with `stream: true` as Server-Sent Events."""
        return await service.chat(who, body, request)

    @app.post("/api/v1/llm/images/generations", tags=["llm"], responses=billed)
    async def image_generations(body: ImageGenerationRequest, request: Request, who: Caller = Depends(caller)):
        """OpenAI image generation."""
        return await service.images(who, body, request)

    @app.get("/api/v1/llm/models", tags=["llm"], responses=reads)
    async def list_models(who: Caller = Depends(caller)):
        """Models this deployment serves."""
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": entry.provider,
             "mode": entry.mode} for name, entry in sorted(service.models.items())]}

    @app.get("/api/v1/credits/balance", tags=["credits"], responses=reads)
    async def credits_balance(request: Request, who: Caller = Depends(caller)):
        """The caller's own balance (org allocation or individual), in credits and millicredits."""
        billing = service.billing(who, request, None)
        balance = await service.client.balance(billing.user_id, billing.org_id)
        return {"user_id": billing.user_id, "funding_source": funding_label(balance.funding),
                **_credits_fields("limit", balance.limit_millicredits),
                **_credits_fields("used", balance.used_millicredits),
                **_credits_fields("held", balance.held_millicredits),
                **_credits_fields("available", balance.available_millicredits)}

    @app.get("/api/v1/usage", tags=["credits"], responses=reads)
    async def usage(who: Caller = Depends(caller),
                    start: datetime | None = Query(None, description="ISO time, inclusive"),
                    end: datetime | None = Query(None, description="ISO time, exclusive"),
                    group_by: str | None = Query(None, pattern="^(model|service_type|day)$"),
                    limit: int = Query(100, ge=1, le=1000)):
        """The caller's own usage rows (or groups), newest first."""
        key = who.key
        if who.org_header and who.org_header != key.org_id:
            if key.org_id:
                raise errors.forbidden(f"This API key belongs to organization '{key.org_id}'.")
            await service.client.balance(key.user_id, who.org_header)  # 403 unless a member
        request = admin_pb2.QueryUsageRequest(
            user_id=key.user_id, org_id=who.org_header or key.org_id, limit=limit,
            group_by=admin_pb2.UsageGroupBy.Value(f"USAGE_GROUP_BY_{group_by.upper()}") if group_by
            else admin_pb2.USAGE_GROUP_BY_UNSPECIFIED)
        for field, name, value in (("start_time", "start", start), ("end_time", "end", end)):
            if value is not None:
                try:
                    getattr(request, field).FromDatetime(
                        value if value.tzinfo else value.replace(tzinfo=timezone.utc))
                except (OverflowError, ValueError):  # outside 0001-01-01 … 9999-12-31 once in UTC
                    raise errors.bad_request(f"'{name}' is out of range (0001-01-01 to 9999-12-31 UTC)",
                                             "invalid_time") from None
        result = await service.client.usage(request)
        return {
            "object": "list",
            "data": [{"request_id": _client_request_id(r.request_id), "reservation_id": r.reservation_id,
                      "model": r.service_name,
                      "service_type": r.service_type, "funding_source": f"org:{r.org_id}" if r.org_id else "individual",
                      **_credits_fields("credits", r.credits_used_millicredits),
                      "created_at": r.created_at.ToDatetime(timezone.utc).isoformat(),
                      "overrun": r.overrun, "late": r.late, "metadata": MessageToDict(r.request_metadata)}
                     for r in result.records],
            "groups": [{"key": g.key, "requests": g.requests, **_credits_fields("credits",
                                                                                 g.credits_used_millicredits)}
                       for g in result.groups],
            "total_requests": result.total_requests,
            **_credits_fields("total_credits", result.total_millicredits),
        }

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics():
        metrics.OUTBOX_PENDING.set(service.client.outbox.count())
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", include_in_schema=False)
    async def healthz():
        return {"status": "ok", "models": len(service.models)}

    app.include_router(console_router(service))  # issue 7: the org console (/console, /api/v1/console)
    return app

