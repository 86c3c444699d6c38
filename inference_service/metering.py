"""A billed call, end to end: estimate → Reserve → call the model → settle (Commit) or void (Release).

The rules this module keeps (the README's Reliability section states them for users):

* Everything a client controls was validated before this point (schemas.py);
  nothing here can be refused by the authority for the client's sake.
* The hold is the worst case of everything sent (billing.py), and the provider
  is always sent the output cap the hold paid for (`max_tokens`).
* Fail closed: no hold, no call. A call that fails before producing anything
  releases its hold (void).
* Once the model produced output, its charge reaches the authority exactly
  once: settlement runs in a task of its own that no client can cancel (a
  non-stream response awaits it shielded; a stream's settlement is spawned
  when the stream ends, breaks or is abandoned), and the authority client
  retries the Commit and then keeps it in the durable outbox.
* A stream never outlives its hold: at the hold's deadline it is cut and
  charged for what was produced.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any

import litellm
from fastapi.responses import JSONResponse, StreamingResponse

from credit.v1 import authority_pb2
from credit_service.money import format_credits

from . import errors, metrics
from .authority_client import AuthorityClient, funding_label
from .billing import ChatEstimate, Pricing
from .budget import CAPPED_HEADER, NO_BUDGET, Budget
from .catalogue import ModelEntry
from .ratelimits import ratelimit_headers
from .schemas import ChatCompletionRequest, ImageGenerationRequest
from .settings import Settings
from .upstream import HoldDeadline, answer, close_quietly, reported_tokens, sse, stream_error, upstream_error

log = logging.getLogger("inference_service")

Headers = dict[str, str]
FIT_ATTEMPTS = 3  # X-Fit-To-Budget: Reserves tried, each fitted to the credits the last refusal found


@dataclass(frozen=True)
class Billing:
    """Who pays for one request, and under which ids."""

    user_id: str
    org_id: str
    end_user: str | None
    request_id: str  # what the client sees (X-Request-Id)
    reserve_id: str  # the Reserve request_id: scoped to the API key
    key_id: str = ""  # the API key the request came in with: its rate limits apply
    budget: Budget = NO_BUDGET  # X-Max-Cost, X-Fit-To-Budget


@dataclass(frozen=True)
class Hold:
    """A placed reservation, and the loop time by which the call must be settled."""

    reserved: authority_pb2.ReserveResponse
    deadline: float
    headers: Headers = field(default_factory=dict)  # on the response: x-ratelimit-*, X-Max-Tokens-Capped

    @property
    def reservation_id(self) -> str:
        return self.reserved.reservation_id


def billing_headers(billing: Billing, charged_mc: int, available_mc: int, funding: Any,
                    queued: bool = False) -> Headers:
    headers = {"X-Request-Id": billing.request_id, "X-Cost-Incurred": format_credits(charged_mc),
               "X-Credits-Remaining": format_credits(available_mc), "X-Funding-Source": funding_label(funding)}
    if queued:
        headers["X-Billing-Status"] = "queued"
    return headers


def settle_margin(ttl_seconds: float) -> float:
    """How long before its hold expires a call must be settled."""
    return max(min(ttl_seconds * 0.1, 60.0), 0.5)


class Meter:
    """Reserve, settle and void through the authority; owns the settlement tasks."""

    def __init__(self, client: AuthorityClient, pricing: Pricing, settings: Settings):
        self.client = client
        self.pricing = pricing
        self.settings = settings
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def drain(self, timeout: float) -> None:
        """Waits for settlements in progress (at shutdown)."""
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=timeout)

    async def reserve(self, billing: Billing, amount_mc: int, service_type: str, entry: ModelEntry,
                      metadata: dict[str, Any], tokens: int = 0) -> Hold:
        """Places the hold, `tokens` estimated (the authority's rate limits for the key, member, org or
        user apply; RATE_LIMITED is 429). `attempt` makes the arguments of this request unique, so a second
        request with the same Idempotency-Key is ALREADY_EXISTS (409) even while the first is in flight."""
        ttl = self.settings.reserve_ttl_seconds
        started = asyncio.get_running_loop().time()
        reserved, earlier = await self.client.reserve(
            request_id=billing.reserve_id, user_id=billing.user_id, org_id=billing.org_id,
            amount_millicredits=amount_mc, ttl_seconds=ttl, service_type=service_type, service_name=entry.name,
            metadata={**metadata, "attempt": uuid.uuid4().hex}, api_key_id=billing.key_id,
            estimated_tokens=tokens)
        metrics.RESERVED.labels(entry.name).inc(amount_mc)
        if earlier:
            raise errors.conflict(f"A request with Idempotency-Key '{billing.request_id}' was already made; "
                                  "send a new key to make a new request.", "idempotency_key_reused")
        return Hold(reserved, started + ttl - settle_margin(ttl), ratelimit_headers(reserved.rate_limits))

    async def void(self, entry: ModelEntry, hold: Hold, exc: Exception) -> errors.ApiError:
        """The model call failed before producing anything billable: release the hold and
        return the error to answer with (400 for a rejected request, else 502)."""
        metrics.RELEASED.labels(entry.name).inc()
        await self.client.release(hold.reservation_id, f"upstream failed: {type(exc).__name__}")
        return upstream_error(exc)

    async def settle(self, hold: Hold, billing: Billing, charged_mc: int, metadata: dict[str, Any],
                     tokens: int | None = None) -> Headers:
        """Commits the actual cost and `tokens` (the real count, when known; never fails: see
        AuthorityClient.commit); returns the response's headers."""
        metrics.COMMITTED.labels(str(metadata.get("model", ""))).inc(charged_mc)
        result = await self.client.commit(hold.reservation_id, charged_mc, metadata, tokens)
        if result is None:  # queued in the outbox: the authority will get it
            reserved = hold.reserved
            remaining = reserved.available_millicredits + reserved.reserved_millicredits - charged_mc
            return {**hold.headers, **billing_headers(billing, charged_mc, remaining, reserved.funding, queued=True)}
        return {**hold.headers, **billing_headers(billing, result.charged_millicredits,
                                                  result.available_millicredits, result.funding)}

    def usage_metadata(self, entry: ModelEntry, billing: Billing, body: Any, **extra: Any) -> dict[str, Any]:
        return {"provider": entry.provider, "model": entry.name, "upstream_model": entry.litellm_model,
                "end_user": billing.end_user, "power_level": getattr(body, "power_level", None),
                "task_type": getattr(body, "task_type", None), "request_id": billing.request_id, **extra}

    def upstream_timeout(self, hold: Hold) -> float:
        remaining = hold.deadline - asyncio.get_running_loop().time()
        return max(min(self.settings.upstream_timeout_seconds, remaining), 0.1)

    # ---- chat ------------------------------------------------------------

    def chat_params(self, entry: ModelEntry, body: ChatCompletionRequest) -> dict[str, Any]:
        """What LiteLLM is sent: the validated fields only (max_tokens is added once estimated)."""
        params: dict[str, Any] = {**entry.litellm_params,
                                  "messages": [m.model_dump(exclude_none=True) for m in body.messages]}
        if body.tools:
            params["tools"] = [t.model_dump(exclude_none=True) for t in body.tools]
        for name in ChatCompletionRequest.FORWARDED:
            value = getattr(body, name)
            if value is not None and not (name == "n" and value == 1):
                params[name] = value
        return params

    async def chat(self, entry: ModelEntry, body: ChatCompletionRequest,
                   billing: Billing) -> JSONResponse | StreamingResponse:
        params, hold, estimate = await self.hold_chat(entry, body, billing, "llm_inference")
        if body.stream:
            return await ChatStream(self, entry, body, billing, hold, estimate).open(params)
        # Shielded: a client that goes away cannot stop the settlement of a call already made.
        task = self.spawn(self.chat_once(entry, body, billing, hold, params, estimate), name="settle-chat")
        payload, headers = await asyncio.shield(task)
        return JSONResponse(payload, headers=headers)

    async def hold_chat(self, entry: ModelEntry, body: ChatCompletionRequest, billing: Billing,
                        service_type: str) -> tuple[dict[str, Any], Hold, ChatEstimate]:
        """Estimates and holds a chat call; returns LiteLLM's params (with the cap the hold paid for)."""
        params = self.chat_params(entry, body)
        wanted = self.pricing.chat_estimate(entry, params, body.requested_max_tokens, body.n)
        hold, estimate = await self.reserve_chat(entry, billing, wanted, body.stream, service_type)
        params["max_tokens"] = estimate.max_tokens  # the provider never writes more than the hold paid for
        if estimate.max_tokens < wanted.max_tokens:
            hold.headers[CAPPED_HEADER] = str(estimate.max_tokens)
        return params, hold, estimate

    async def reserve_chat(self, entry: ModelEntry, billing: Billing, estimate: ChatEstimate,
                           stream: bool, service_type: str) -> tuple[Hold, ChatEstimate]:
        """Holds the worst case, within X-Max-Cost; with X-Fit-To-Budget, `max_tokens` capped to the
        credits available when the worst case does not fit them. Returns the hold and what it paid for."""
        budget = billing.budget
        if budget.max_cost_mc is not None:
            fitted = self.pricing.fit(entry, estimate, budget.max_cost_mc)
            if fitted is None:
                raise errors.max_cost_too_low(budget.max_cost_mc, self.pricing.chat_worst_mc(
                    entry, estimate.reserved_prompt_tokens, 1, estimate.n))
            estimate = fitted
        for attempt in range(FIT_ATTEMPTS):
            try:
                hold = await self.reserve(billing, estimate.amount_mc, service_type, entry,
                                          {"estimate_millicredits": estimate.amount_mc, "stream": stream,
                                           "max_tokens": estimate.max_tokens}, tokens=estimate.tokens)
                return hold, estimate
            except errors.InsufficientCredits as refused:  # nothing was held: fit to what is available
                fitted = self.pricing.fit(entry, estimate, refused.available_mc) if budget.fit else None
                if fitted is None or attempt == FIT_ATTEMPTS - 1:
                    raise
                estimate = fitted
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def chat_once(self, entry: ModelEntry, body: ChatCompletionRequest, billing: Billing, hold: Hold,
                        params: dict[str, Any], estimate: ChatEstimate) -> tuple[dict[str, Any], Headers]:
        request = litellm.acompletion(**params, timeout=self.upstream_timeout(hold))
        response, latency_ms = await answer(entry.name, request, lambda exc: self.void(entry, hold, exc))
        try:
            payload: dict[str, Any] = response.model_dump(exclude_none=True)
            payload["model"] = entry.name
            prompt, completion = self.response_tokens(entry, estimate, payload)
            charged, extra = self.chat_charge(entry, prompt, completion)
            tokens: int | None = prompt + completion
        except Exception:  # the call was made: if its cost cannot be read, charge the whole hold
            log.exception("usage of a %s call could not be read; charging its hold", entry.name)
            payload = {"object": "chat.completion", "model": entry.name, "choices": []}
            charged, extra, tokens = hold.reserved.reserved_millicredits, {"cost_unknown": True}, None
        metadata = self.usage_metadata(entry, billing, body, estimate_millicredits=estimate.amount_mc,
                                       max_tokens=estimate.max_tokens, latency_ms=latency_ms, **extra)
        return payload, await self.settle(hold, billing, charged, metadata, tokens)

    def response_tokens(self, entry: ModelEntry, estimate: ChatEstimate,
                        payload: dict[str, Any]) -> tuple[int, int]:
        """The provider's token counts; our own count of what was sent and written if it gave none."""
        try:
            return reported_tokens(payload.get("usage"))
        except ValueError:
            written = [json.dumps(c.get("message") or {}, ensure_ascii=False) for c in payload.get("choices") or ()]
            return estimate.counted_prompt_tokens, self.pricing.count_tokens(entry, "".join(written))

    def chat_charge(self, entry: ModelEntry, prompt: int, completion: int) -> tuple[int, dict[str, Any]]:
        cost_usd = self.pricing.chat_cost_usd(entry, prompt, completion)
        return self.pricing.to_millicredits(cost_usd), {
            "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "cost_usd": str(cost_usd)}

    # ---- images ----------------------------------------------------------

    async def images(self, entry: ModelEntry, body: ImageGenerationRequest, billing: Billing) -> JSONResponse:
        try:
            estimate = self.pricing.image_estimate(entry, body.n, body.quality, body.size)
        except ValueError as exc:
            raise errors.bad_request(str(exc), "unsupported_image_option") from None
        if billing.budget.max_cost_mc is not None and estimate > billing.budget.max_cost_mc:
            raise errors.max_cost_too_low(billing.budget.max_cost_mc, estimate)  # images cannot be capped
        hold = await self.reserve(billing, estimate, "image_generation", entry, {"estimate_millicredits": estimate})
        task = self.spawn(self._image_once(entry, body, billing, hold, estimate), name="settle-image")
        payload, headers = await asyncio.shield(task)
        return JSONResponse(payload, headers=headers)

    async def _image_once(self, entry: ModelEntry, body: ImageGenerationRequest, billing: Billing, hold: Hold,
                          estimate: int) -> tuple[dict[str, Any], Headers]:
        params = {**entry.litellm_params, "prompt": body.prompt, "n": body.n,
                  "timeout": self.upstream_timeout(hold)}
        for name in ("size", "quality", "style", "response_format"):
            if getattr(body, name) is not None:
                params[name] = getattr(body, name)
        try:
            response = await litellm.aimage_generation(**params)
        except Exception as exc:
            raise await self.void(entry, hold, exc) from None
        try:
            images = len(response.data or []) or body.n
            reported = (getattr(response, "_hidden_params", None) or {}).get("response_cost")
            cost_usd = self.pricing.image_cost_usd(entry, images, body.quality, body.size, reported)
            charged = self.pricing.to_millicredits(cost_usd)
            extra: dict[str, Any] = {"images": images, "size": body.size, "quality": body.quality,
                                     "cost_usd": str(cost_usd)}
            payload = {k: v for k, v in response.model_dump(exclude_none=True).items()
                       if k in ("created", "data", "usage")}
        except Exception:
            log.exception("cost of a %s call could not be read; charging its hold", entry.name)
            charged, extra, payload = hold.reserved.reserved_millicredits, {"cost_unknown": True}, {"data": []}
        metadata = self.usage_metadata(entry, billing, body, estimate_millicredits=estimate, **extra)
        return payload, await self.settle(hold, billing, charged, metadata)


@dataclass
class ChatStream:
    """One streamed chat completion: relays chunks, and settles exactly once, whatever happens."""

    meter: Meter
    entry: ModelEntry
    body: ChatCompletionRequest
    billing: Billing
    hold: Hold
    estimate: ChatEstimate
    usage: dict[str, Any] | None = None
    produced: list[str] = field(default_factory=list)  # everything generated: text, refusals, tool calls
    settlement: asyncio.Task[Headers] | None = None

    async def open(self, params: dict[str, Any]) -> StreamingResponse:
        try:
            upstream = await litellm.acompletion(**params, stream=True, stream_options={"include_usage": True},
                                                 timeout=self.meter.upstream_timeout(self.hold))
        except Exception as exc:
            raise await self.meter.void(self.entry, self.hold, exc) from None
        # The hold's deadline settles the stream even while a slow reader blocks the relay.
        timer = asyncio.get_running_loop().call_at(self.hold.deadline, self.settle, True)
        headers = {**self.hold.headers, "X-Request-Id": self.billing.request_id, "Cache-Control": "no-cache",
                   "X-Funding-Source": funding_label(self.hold.reserved.funding)}
        return StreamingResponse(self.events(upstream, timer), media_type="text/event-stream", headers=headers)

    def settle(self, cut: bool) -> asyncio.Task[Headers]:
        """Starts the settlement (once); it runs on even if the client goes away."""
        if self.settlement is None:
            self.settlement = self.meter.spawn(self._settle(cut), name="settle-stream")
        return self.settlement

    async def _settle(self, cut: bool) -> Headers:
        try:
            prompt, completion = reported_tokens(self.usage)
        except ValueError:  # cut before the provider reported usage: count what was generated
            prompt = self.estimate.counted_prompt_tokens
            completion = self.meter.pricing.count_tokens(self.entry, "".join(self.produced))
        charged, extra = self.meter.chat_charge(self.entry, prompt, completion)
        metadata = self.meter.usage_metadata(self.entry, self.billing, self.body, stream=True, stream_cut=cut,
                                             estimate_millicredits=self.estimate.amount_mc,
                                             max_tokens=self.estimate.max_tokens, **extra)
        return await self.meter.settle(self.hold, self.billing, charged, metadata, prompt + completion)

    def observe(self, data: dict[str, Any]) -> None:
        if data.get("usage"):
            self.usage = data["usage"]
        for choice in data.get("choices") or ():
            delta = choice.get("delta") or {}
            for name in ("content", "refusal"):
                if isinstance(delta.get(name), str):
                    self.produced.append(delta[name])
            calls = list(delta.get("tool_calls") or ()) + ([delta["function_call"]] if delta.get("function_call")
                                                           else [])
            for call in calls:
                function = call.get("function", call) or {}
                self.produced.extend(str(function.get(k) or "") for k in ("name", "arguments"))

    async def chunks(self, upstream: Any) -> AsyncIterator[dict[str, Any]]:
        """The provider's chunks, until it ends or the hold's deadline settles the stream."""
        iterator = aiter(upstream)
        while self.settlement is None:
            try:
                async with asyncio.timeout_at(self.hold.deadline):
                    chunk = await anext(iterator)
            except StopAsyncIteration:
                return
            except TimeoutError:
                break
            data: dict[str, Any] = chunk.model_dump(exclude_none=True)
            data["model"] = self.entry.name
            self.observe(data)
            yield data
        raise HoldDeadline("The stream reached the end of its credit hold and was stopped; "
                           "what was generated is charged.")

    async def events(self, upstream: Any, timer: asyncio.TimerHandle) -> AsyncIterator[str]:
        wants_usage = bool(self.body.stream_options and self.body.stream_options.include_usage)
        pending: dict[str, Any] | None = None
        try:
            async for data in self.chunks(upstream):
                if not data.get("choices") and not wants_usage:
                    continue
                if pending is not None:
                    yield sse(pending)
                pending = data
            headers = await asyncio.shield(self.settle(cut=False))
            last = pending or {"object": "chat.completion.chunk", "choices": [], "model": self.entry.name}
            last["x_billing"] = {"cost_incurred": headers["X-Cost-Incurred"],
                                 "credits_remaining": headers["X-Credits-Remaining"],
                                 "funding_source": headers["X-Funding-Source"],
                                 "request_id": self.billing.request_id}
            yield sse(last)
            yield "data: [DONE]\n\n"
        except Exception as exc:  # the provider broke off, or the hold's deadline came: charge what was made
            log.warning("stream from %s ended early: %s", self.entry.name, type(exc).__name__)
            self.settle(cut=True)
            yield sse(stream_error(exc))
        finally:  # also when the client went away (the task is cancelled): charge what was produced
            timer.cancel()
            self.settle(cut=True)
            await close_quietly(upstream)
