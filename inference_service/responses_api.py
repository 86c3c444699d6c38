"""`POST /api/v1/llm/responses`: OpenAI's Responses API, billed as chat is.

A Responses request is translated into a chat completion in our own code (responses_schema.py) and
goes through the chat billing path unchanged (metering.py: estimate of everything sent → Reserve →
LiteLLM's acompletion → Commit), under service type `responses`; the chat answer (or its stream of
chunks) is rendered back as a Response object (or Responses events). Why not `litellm.aresponses`:
its `mock_response` answers a fixed canned Response (fixed usage, no stream) instead of the catalogue's
demo model, and for OpenAI models it calls `/v1/responses`, whose input the worst-case estimate would
have to price separately; through chat, every provider (OpenAI, Anthropic, OpenRouter, the offline
demo model) is billed by the same estimate, the same output cap and the same stream settlement.

Streams: `response.created`, `response.in_progress`, then output items as the chunks arrive
(`response.output_item.added`, `response.content_part.added`, `response.output_text.delta`,
`response.function_call_arguments.delta`, …), all closed at the end, then `response.completed` (or
`response.incomplete` when the output cap was reached) with the usage charged and an `x_billing`
field (cost, credits remaining, funding source, request id). A stream cut by the client, broken by
the provider or stopped at its hold's deadline is charged for what was produced, as chat's are; the
last two end with an `error` event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from . import errors
from .billing import ChatEstimate
from .catalogue import ModelEntry
from .metering import ChatStream, Headers, Meter
from .responses_schema import FunctionChoice, ResponsesRequest
from .upstream import close_quietly, reported_tokens, stream_error

if TYPE_CHECKING:
    from .service import Caller, InferenceService

log = logging.getLogger("inference_service")

SERVICE_TYPE = "responses"
# A chat finish_reason that leaves a Response incomplete, and the reason it gives.
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def usage_of(prompt: int, completion: int, reported: dict[str, Any] | None) -> dict[str, Any]:
    """The Responses API's usage for the tokens charged (details from the provider's usage when given)."""
    reported = reported if isinstance(reported, dict) else {}
    cached = (reported.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (reported.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": int(cached)},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": int(reasoning)},
            "total_tokens": prompt + completion}


def billing_of(headers: Headers, request_id: str) -> dict[str, str]:
    return {"cost_incurred": headers["X-Cost-Incurred"], "credits_remaining": headers["X-Credits-Remaining"],
            "funding_source": headers["X-Funding-Source"], "request_id": request_id}


@dataclass
class Envelope:
    """What every rendering of one Response shares: its id, the request's settings, the cap sent."""

    body: ResponsesRequest
    model: str
    max_output_tokens: int
    id: str = field(default_factory=lambda: new_id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))

    def response(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None = None,
                 finish: str | None = None) -> dict[str, Any]:
        body = self.body
        choice: Any = body.tool_choice or "auto"
        text_format = body.text.format if body.text is not None and body.text.format is not None else None
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status, "error": None,
            "incomplete_details": {"reason": INCOMPLETE[finish]} if status == "incomplete" and finish else None,
            "instructions": body.instructions, "max_output_tokens": self.max_output_tokens, "model": self.model,
            "output": output, "parallel_tool_calls": body.parallel_tool_calls is not False,
            "previous_response_id": None, "store": False, "background": False,
            "temperature": body.temperature, "top_p": body.top_p,
            "tool_choice": choice.model_dump() if isinstance(choice, FunctionChoice) else choice,
            "tools": [tool.model_dump(exclude_none=True) for tool in body.tools or ()],
            "text": {"format": text_format.model_dump(by_alias=True, exclude_none=True) if text_format
                     else {"type": "text"}},
            "truncation": "disabled", "usage": usage, "user": body.user, "metadata": {}}


def status_of(finish: str | None) -> str:
    return "incomplete" if finish in INCOMPLETE else "completed"


def output_of(payload: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """A chat completion's first choice as Responses output items, and its finish_reason."""
    choices = payload.get("choices") or []
    if not choices:
        return [], None
    message, finish = choices[0].get("message") or {}, choices[0].get("finish_reason")
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "output_text", "text": str(message["content"]), "annotations": [], "logprobs": []})
    if message.get("refusal"):
        content.append({"type": "refusal", "refusal": str(message["refusal"])})
    items: list[dict[str, Any]] = []
    if content:
        items.append({"type": "message", "id": new_id("msg"), "status": status_of(finish), "role": "assistant",
                      "content": content})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        items.append({"type": "function_call", "id": new_id("fc"), "call_id": call.get("id") or new_id("call"),
                      "name": function.get("name") or "", "arguments": function.get("arguments") or "",
                      "status": "completed"})
    return items, finish


class StreamedResponse:
    """Chat chunks in, Responses events out (server-sent events with `event:` names, as OpenAI sends)."""

    def __init__(self, envelope: Envelope):
        self.envelope = envelope
        self.sequence = 0
        self.items: list[dict[str, Any]] = []
        self.message: dict[str, Any] | None = None
        self.parts: dict[str, int] = {}  # "output_text" | "refusal" -> content index in the message
        self.calls: dict[int, dict[str, Any]] = {}  # chat tool-call index -> function_call item
        self.finish: str | None = None

    def event(self, kind: str, **fields: Any) -> str:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"

    def start(self) -> list[str]:
        snapshot = self.envelope.response("in_progress", [])
        return [self.event("response.created", response=snapshot),
                self.event("response.in_progress", response=snapshot)]

    def chunk(self, data: dict[str, Any]) -> list[str]:
        events: list[str] = []
        for choice in data.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            for kind, key in (("output_text", "content"), ("refusal", "refusal")):
                if isinstance(delta.get(key), str) and delta[key]:
                    events += self.part_delta(kind, delta[key])
            for call in delta.get("tool_calls") or ():
                events += self.call_delta(call)
            self.finish = choice.get("finish_reason") or self.finish
        return events

    def part_delta(self, kind: str, text: str) -> list[str]:
        events: list[str] = []
        if self.message is None:
            self.message = {"type": "message", "id": new_id("msg"), "status": "in_progress", "role": "assistant",
                            "content": []}
            self.items.append(self.message)
            events.append(self.event("response.output_item.added", output_index=len(self.items) - 1,
                                     item=self.message))
        item, index, key = self.message, self.items.index(self.message), "text" if kind == "output_text" else kind
        where = {"item_id": item["id"], "output_index": index}
        if kind not in self.parts:
            self.parts[kind] = len(item["content"])
            item["content"].append({"type": kind, key: "", **({"annotations": []} if kind == "output_text" else {})})
            events.append(self.event("response.content_part.added", **where, content_index=self.parts[kind],
                                     part=item["content"][-1]))
        item["content"][self.parts[kind]][key] += text
        extra: dict[str, Any] = {"logprobs": []} if kind == "output_text" else {}
        events.append(self.event(f"response.{kind}.delta", **where, content_index=self.parts[kind], delta=text,
                                 **extra))
        return events

    def call_delta(self, call: dict[str, Any]) -> list[str]:
        events: list[str] = []
        function = call.get("function") or {}
        item = self.calls.get(call.get("index", 0))
        if item is None:
            item = {"type": "function_call", "id": new_id("fc"), "call_id": call.get("id") or new_id("call"),
                    "name": function.get("name") or "", "arguments": "", "status": "in_progress"}
            self.calls[call.get("index", 0)] = item
            self.items.append(item)
            events.append(self.event("response.output_item.added", output_index=len(self.items) - 1, item=item))
        elif function.get("name") and not item["name"]:
            item["name"] = function["name"]
        if function.get("arguments"):
            item["arguments"] += function["arguments"]
            events.append(self.event("response.function_call_arguments.delta", item_id=item["id"],
                                     output_index=self.items.index(item), delta=function["arguments"]))
        return events

    def finish_events(self, usage: dict[str, Any], billing: dict[str, str]) -> list[str]:
        """Closes every item, then `response.completed` (or `response.incomplete`) with usage and billing."""
        status, events = status_of(self.finish), []
        for index, item in enumerate(self.items):
            where = {"item_id": item["id"], "output_index": index}
            if item["type"] == "message":
                for content_index, part in enumerate(item["content"]):
                    if part["type"] == "output_text":
                        events.append(self.event("response.output_text.done", **where, content_index=content_index,
                                                 text=part["text"], logprobs=[]))
                    else:
                        events.append(self.event("response.refusal.done", **where, content_index=content_index,
                                                 refusal=part["refusal"]))
                    events.append(self.event("response.content_part.done", **where, content_index=content_index,
                                             part=part))
                item["status"] = status
            else:
                events.append(self.event("response.function_call_arguments.done", **where, name=item["name"],
                                         arguments=item["arguments"]))
                item["status"] = "completed"
            events.append(self.event("response.output_item.done", output_index=index, item=item))
        final = self.envelope.response(status, self.items, usage, self.finish)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return events + [self.event(kind, response=final, x_billing=billing)]

    def error(self, exc: Exception) -> str:
        error = stream_error(exc)["error"]
        return self.event("error", code=error["code"], message=error["message"], param=None)


@dataclass(kw_only=True)
class ResponsesStream(ChatStream):
    """A streamed Response: chat's stream (same settlement, exactly once), rendered as Responses events."""

    rendered: StreamedResponse

    def tokens(self) -> tuple[int, int]:
        """The tokens charged: the provider's usage, else (cut early) our count, as ChatStream settles."""
        try:
            return reported_tokens(self.usage)
        except ValueError:
            return (self.estimate.counted_prompt_tokens,
                    self.meter.pricing.count_tokens(self.entry, "".join(self.produced)))

    async def events(self, upstream: Any, timer: asyncio.TimerHandle) -> AsyncIterator[str]:
        out = self.rendered
        try:
            for event in out.start():
                yield event
            async for data in self.chunks(upstream):
                for event in out.chunk(data):
                    yield event
            headers = await asyncio.shield(self.settle(cut=False))
            usage = usage_of(*self.tokens(), self.usage)
            for event in out.finish_events(usage, billing_of(headers, self.billing.request_id)):
                yield event
        except Exception as exc:  # the provider broke off, or the hold's deadline came: charge what was made
            log.warning("responses stream from %s ended early: %s", self.entry.name, type(exc).__name__)
            self.settle(cut=True)
            yield out.error(exc)
        finally:  # also when the client went away (the task is cancelled): charge what was produced
            timer.cancel()
            self.settle(cut=True)
            await close_quietly(upstream)


def response_of(meter: Meter, entry: ModelEntry, estimate: ChatEstimate, envelope: Envelope,
             payload: dict[str, Any]) -> dict[str, Any]:
    """A non-streamed Response from the chat completion that was charged."""
    output, finish = output_of(payload)
    prompt, completion = meter.response_tokens(entry, estimate, payload)
    return envelope.response(status_of(finish), output, usage_of(prompt, completion, payload.get("usage")), finish)


async def create_response(service: InferenceService, caller: Caller, body: ResponsesRequest,
                          request: Request) -> JSONResponse | StreamingResponse:
    entry = service.model(body.model, "chat")
    try:
        chat = body.chat_request()
    except ValidationError as exc:  # what chat itself would refuse: nothing is held
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise errors.bad_request(f"input: {where}: {first.get('msg')}") from None
    billing = service.billing(caller, request, body.user)
    meter = service.meter
    params, hold, estimate = await meter.hold_chat(entry, chat, billing, SERVICE_TYPE)
    envelope = Envelope(body, entry.name, estimate.max_tokens)
    if body.stream:
        stream = ResponsesStream(meter, entry, chat, billing, hold, estimate, rendered=StreamedResponse(envelope))
        return await stream.open(params)
    # Shielded: a client that goes away cannot stop the settlement of a call already made.
    task = meter.spawn(meter.chat_once(entry, chat, billing, hold, params, estimate), name="settle-responses")
    payload, headers = await asyncio.shield(task)
    return JSONResponse(response_of(meter, entry, estimate, envelope, payload), headers=headers)
