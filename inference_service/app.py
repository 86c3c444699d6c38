"""The OpenAI-compatible REST front door. Every billed call is
estimate → Reserve → LiteLLM → Commit (or Release), through the authority.

Fail closed: if the authority cannot be reached, no model is called (503).
Never lose usage: once a model answered, the Commit is retried, queued in a
durable outbox if need be, and a stream cut by the client is still charged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import litellm
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from google.protobuf.json_format import MessageToDict
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from credit.v1 import admin_pb2, authority_pb2, types_pb2
from credit_service import logs
from credit_service.money import format_credits

from . import catalogue, errors, metrics
from .authority_client import ApiKey, AuthorityClient, Tls, funding_label
from .billing import Pricing
from .console import console_router
from .edge import Edge
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


@dataclass(frozen=True)
class Billing:
    """Who pays for one request, and under which ids."""

    user_id: str
    org_id: str
    end_user: str | None
    request_id: str  # what the client sees (X-Request-Id)
    reserve_id: str  # the Reserve request_id: scoped to the API key

    def headers(self) -> dict[str, str]:
        return {"X-Request-Id": self.request_id}


def billing_headers(billing: Billing, charged_mc: int, available_mc: int, funding: types_pb2.Funding,
                    queued: bool = False) -> dict[str, str]:
    headers = {"X-Request-Id": billing.request_id, "X-Cost-Incurred": format_credits(charged_mc),
               "X-Credits-Remaining": format_credits(available_mc), "X-Funding-Source": funding_label(funding)}
    if queued:
        headers["X-Billing-Status"] = "queued"
    return headers


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
        self.background: set[asyncio.Task] = set()
        self.failures = AuthFailures(settings.auth_failure_limit, settings.auth_failure_window_seconds)

    async def start(self) -> None:
        outbox = CommitOutbox(self.settings.outbox_path)
        tls = Tls(self.settings.authority_tls_ca_file, self.settings.authority_tls_cert_file,
                  self.settings.authority_tls_key_file)
        self._client = AuthorityClient(self.settings.authority_addr, self.settings.service_token,
                                      timeout=self.settings.authority_timeout_seconds,
                                      key_cache_seconds=self.settings.key_cache_seconds, outbox=outbox, tls=tls)
        self.spawn(self.client.run_outbox(self.settings.outbox_replay_seconds))

    @property
    def client(self) -> AuthorityClient:
        if self._client is None:
            raise RuntimeError("the service has not started")
        return self._client

    async def stop(self) -> None:
        pending = [t for t in self.background if not t.done()]
        settling = [t for t in pending if t.get_name().startswith("settle")]
        if settling:
            await asyncio.wait(settling, timeout=10)
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

    async def reserve(self, billing: Billing, amount_mc: int, service_type: str, entry: catalogue.ModelEntry,
                      metadata: dict[str, Any]) -> authority_pb2.ReserveResponse:
        hold, earlier = await self.client.reserve(
            request_id=billing.reserve_id, user_id=billing.user_id, org_id=billing.org_id,
            amount_millicredits=amount_mc, ttl_seconds=self.settings.reserve_ttl_seconds,
            service_type=service_type, service_name=entry.name, metadata=metadata)
        metrics.RESERVED.labels(entry.name).inc(amount_mc)
        if earlier:
            state = "is still in progress" if hold.status == "held" else f"was already processed ({hold.status})"
            raise errors.conflict(f"A request with Idempotency-Key '{billing.request_id}' {state}; "
                                  "send a new key to make a new request.", "idempotency_key_reused")
        return hold

    async def _void(self, entry: catalogue.ModelEntry, hold: authority_pb2.ReserveResponse,
                    exc: Exception) -> errors.ApiError:
        """The model call failed before producing anything billable: release the hold and
        return the error to answer with (400 for a rejected request, else 502)."""
        metrics.RELEASED.labels(entry.name).inc()
        await self.client.release(hold.reservation_id, f"upstream failed: {type(exc).__name__}")
        return _upstream_error(exc)

    async def settle(self, hold: authority_pb2.ReserveResponse, billing: Billing, charged_mc: int,
                     metadata: dict[str, Any]) -> dict[str, str]:
        """Commits the actual cost; returns the billing headers."""
        metrics.COMMITTED.labels(metadata.get("model", "")).inc(charged_mc)
        result = await self.client.commit(hold.reservation_id, charged_mc, metadata)
        if result is None:  # queued in the outbox: the authority will get it
            remaining = hold.available_millicredits + hold.reserved_millicredits - charged_mc
            return billing_headers(billing, charged_mc, remaining, hold.funding, queued=True)
        return billing_headers(billing, result.charged_millicredits, result.available_millicredits, result.funding)

    # ---- chat ------------------------------------------------------------

    def _chat_params(self, entry: catalogue.ModelEntry, body: ChatCompletionRequest) -> dict[str, Any]:
        params: dict[str, Any] = {**entry.litellm_params,
                                  "messages": [m.model_dump(exclude_none=True) for m in body.messages],
                                  "timeout": self.settings.upstream_timeout_seconds}
        max_tokens = body.max_tokens or body.max_completion_tokens
        if max_tokens:
            params["max_tokens"] = max_tokens
        for name in ChatCompletionRequest.FORWARDED:
            value = getattr(body, name)
            if value is not None and not (name == "n" and value == 1):
                params[name] = value
        return params

    def _usage_metadata(self, entry: catalogue.ModelEntry, billing: Billing, body: Any, **extra: Any) -> dict:
        return {"provider": entry.provider, "model": entry.name, "upstream_model": entry.litellm_model,
                "end_user": billing.end_user, "power_level": getattr(body, "power_level", None),
                "task_type": getattr(body, "task_type", None), "request_id": billing.request_id, **extra}

    async def chat(self, caller: Caller, body: ChatCompletionRequest, request: Request):
        entry = self.model(body.model, "chat")
        billing = self.billing(caller, request, body.user)
        params = self._chat_params(entry, body)
        prompt_tokens = self.pricing.prompt_tokens(entry, params["messages"])
        max_tokens = body.max_tokens or body.max_completion_tokens
        estimate = self.pricing.chat_estimate(entry, prompt_tokens, max_tokens, body.n)
        hold = await self.reserve(billing, estimate, "llm_inference", entry,
                                  {"estimate_millicredits": estimate, "stream": body.stream})
        if body.stream:
            return await self._chat_stream(entry, body, billing, hold, params, prompt_tokens, estimate)
        # Shielded: a client that goes away cannot stop the settlement of a call already made.
        task = self.spawn(self._chat_once(entry, body, billing, hold, params, estimate), name="settle-chat")
        payload, headers = await asyncio.shield(task)
        return JSONResponse(payload, headers=headers)

    async def _chat_once(self, entry, body, billing, hold, params, estimate):
        started = time.monotonic()
        try:
            response = await litellm.acompletion(**params)
        except Exception as exc:  # the provider failed: nothing to charge
            raise await self._void(entry, hold, exc) from None
        finally:
            metrics.UPSTREAM_LATENCY.labels(entry.name).observe(time.monotonic() - started)
        usage = response.usage
        cost_usd = self.pricing.chat_cost_usd(entry, usage.prompt_tokens, usage.completion_tokens)
        charged = self.pricing.to_millicredits(cost_usd)
        metadata = self._usage_metadata(
            entry, billing, body, prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens, cost_usd=str(cost_usd), estimate_millicredits=estimate,
            latency_ms=int((time.monotonic() - started) * 1000))
        headers = await self.settle(hold, billing, charged, metadata)
        payload = response.model_dump(exclude_none=True)
        payload["model"] = entry.name
        return payload, headers

    async def _chat_stream(self, entry, body, billing, hold, params, prompt_tokens, estimate):
        try:
            stream = await litellm.acompletion(**params, stream=True, stream_options={"include_usage": True})
        except Exception as exc:
            raise await self._void(entry, hold, exc) from None
        wants_usage = bool(body.stream_options and body.stream_options.include_usage)
        state = _StreamState(prompt_tokens=prompt_tokens)

        async def settle_stream(cut: bool) -> dict[str, str]:
            if state.usage is not None:
                prompt, completion = state.usage["prompt_tokens"], state.usage["completion_tokens"]
            else:  # cut before the provider reported usage: count what was generated
                prompt = state.prompt_tokens
                completion = litellm.token_counter(model=entry.litellm_model, text="".join(state.text)) \
                    if state.text else 0
            cost_usd = self.pricing.chat_cost_usd(entry, prompt, completion)
            metadata = self._usage_metadata(
                entry, billing, body, prompt_tokens=prompt, completion_tokens=completion,
                total_tokens=prompt + completion, cost_usd=str(cost_usd), estimate_millicredits=estimate,
                stream=True, stream_cut=cut)
            return await self.settle(hold, billing, self.pricing.to_millicredits(cost_usd), metadata)

        async def events():
            pending: dict | None = None
            settled = False
            try:
                async for chunk in stream:
                    data = chunk.model_dump(exclude_none=True)
                    data["model"] = entry.name
                    if data.get("usage"):
                        state.usage = data["usage"]
                    for choice in data.get("choices") or ():
                        content = (choice.get("delta") or {}).get("content")
                        if content:
                            state.text.append(content)
                    if not data.get("choices") and not wants_usage:
                        continue
                    if pending is not None:
                        yield _sse(pending)
                    pending = data
                settled = True
                headers = await settle_stream(cut=False)
                last = pending or {"object": "chat.completion.chunk", "choices": [], "model": entry.name}
                last["x_billing"] = {"cost_incurred": headers["X-Cost-Incurred"],
                                     "credits_remaining": headers["X-Credits-Remaining"],
                                     "funding_source": headers["X-Funding-Source"],
                                     "request_id": billing.request_id}
                yield _sse(last)
                yield "data: [DONE]\n\n"
            except Exception as exc:
                if not settled:
                    log.warning("stream from %s failed mid-way: %s", entry.name, type(exc).__name__)
                    settled = True
                    self.spawn(settle_stream(cut=True), name="settle-stream")
                yield _sse({"error": {"message": _upstream_message(exc), "type": "upstream_error",
                                      "code": "upstream_failed"}})
            finally:
                if not settled:  # the client went away: charge for what was produced
                    self.spawn(settle_stream(cut=True), name="settle-stream")
                close = getattr(stream, "aclose", None)
                if close is not None:
                    try:
                        await close()
                    except Exception:
                        pass

        headers = {"X-Request-Id": billing.request_id, "X-Funding-Source": funding_label(hold.funding),
                   "Cache-Control": "no-cache"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    # ---- images ----------------------------------------------------------

    async def images(self, caller: Caller, body: ImageGenerationRequest, request: Request):
        entry = self.model(body.model, "image_generation")
        billing = self.billing(caller, request, body.user)
        estimate = self.pricing.image_estimate(entry, body.n)
        hold = await self.reserve(billing, estimate, "image_generation", entry, {"estimate_millicredits": estimate})
        task = self.spawn(self._image_once(entry, body, billing, hold, estimate), name="settle-image")
        payload, headers = await asyncio.shield(task)
        return JSONResponse(payload, headers=headers)

    async def _image_once(self, entry, body, billing, hold, estimate):
        params = {**entry.litellm_params, "prompt": body.prompt, "n": body.n,
                  "timeout": self.settings.upstream_timeout_seconds}
        for name in ("size", "quality", "style", "response_format"):
            if getattr(body, name) is not None:
                params[name] = getattr(body, name)
        try:
            response = await litellm.aimage_generation(**params)
        except Exception as exc:
            raise await self._void(entry, hold, exc) from None
        images = len(response.data or []) or body.n
        reported = (getattr(response, "_hidden_params", None) or {}).get("response_cost")
        cost_usd = self.pricing.image_cost_usd(entry, images, reported)
        metadata = self._usage_metadata(entry, billing, body, images=images, size=body.size,
                                        cost_usd=str(cost_usd), estimate_millicredits=estimate)
        headers = await self.settle(hold, billing, self.pricing.to_millicredits(cost_usd), metadata)
        payload = response.model_dump(exclude_none=True)
        return {k: v for k, v in payload.items() if k in ("created", "data", "usage")}, headers


@dataclass
class _StreamState:
    prompt_tokens: int
    usage: dict | None = None

    def __post_init__(self) -> None:
        self.text: list[str] = []


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def _upstream_error(exc: Exception) -> errors.ApiError:
    """A provider's 4xx about the request (unsupported parameter, context too long) is the
    client's error: 400. Anything else is the provider failing: 502. Either way the hold is gone."""
    status = getattr(exc, "status_code", None)
    if status in (400, 404, 413, 422):
        detail = str(getattr(exc, "message", "") or exc).replace("\n", " ")[:300]
        return errors.ApiError(400, f"The model provider rejected the request: {detail}",
                               "invalid_request_error", "provider_rejected_request")
    return errors.upstream_failed(_upstream_message(exc))


def _upstream_message(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    suffix = f" (status {status})" if status else ""
    return f"The model provider failed{suffix}: {type(exc).__name__}. The credit hold was released."


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
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
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

