"""The billed calls of the other modes, on the Meter's Reserve / settle / void (metering.py keeps the rules):

* embeddings: the worst case is the input (no output): text counted here × PROMPT_SAFETY, token arrays
  as they are; charged from the provider's `usage.prompt_tokens`, or our count when it reports none — a
  missing `usage` arrives from LiteLLM as zeros, so a reported 0 (or less) for an input, which is never
  empty, counts as no report.
* audio transcriptions: the worst case is every second the file's bytes could hold (audio.py), in
  whole seconds, × the catalogue's per-second price; charged from the provider's reported duration (`usage.seconds`, or
  `duration` of verbose_json) when it reports one (OpenAI reports none for text, srt and vtt), else
  every second of audio the file's bytes could hold from its data chunk on (audio.py: never the
  header's declared frames, which the client writes). A provider reporting more
  seconds than the hold paid for is charged what it reported, and the authority flags it `overrun`.
* moderations: not billed. They pass through Reserve all the same, because that is where the authority
  applies the rate limits (requests per minute, requests in flight, the tokens-per-minute check): a hold
  of 1 millicredit (the least Reserve takes) that is released, never committed, when the call ends —
  so no attribution row and no charge, but a released reservation per moderation (README, "How a call
  is billed").

Whatever the client controls is checked before Reserve (400, nothing held, no model called): the
schemas (schemas.py), the token bounds below, the file's size and duration, and the parameters LiteLLM
itself would refuse for the model.
"""

from __future__ import annotations

import asyncio
import logging
import math
from decimal import Decimal
from typing import Any

import litellm
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from litellm.utils import get_optional_params_embeddings

from . import errors
from .audio import AudioFile
from .billing import PROMPT_SAFETY, InputEstimate
from .catalogue import ModelEntry
from .metering import Billing, Headers, Hold, Meter, billing_headers
from .offline import offline_params
from .schemas import EmbeddingRequest, ModerationRequest, TranscriptionForm
from .upstream import answer

log = logging.getLogger("inference_service")

MODERATION_HOLD_MC = 1  # the least Reserve takes; released, never charged
TEXT_FORMATS = ("text", "srt", "vtt")  # transcription formats answered as plain text


def _check_tokens(what: str, counts: list[int], per_input: int, total_cap: int) -> None:
    """400 when one input has more tokens than the model takes, or all of them more than `total_cap`."""
    for index, count in enumerate(counts):
        if count > per_input:
            where = f"input[{index}]" if len(counts) > 1 else "input"
            raise errors.bad_request(f"{where} has {count:,} tokens; {what} takes at most {per_input:,} per input",
                                     "input_too_long")
    if sum(counts) > total_cap:
        raise errors.bad_request(f"input has {sum(counts):,} tokens in all; at most {total_cap:,} per request",
                                 "input_too_long")


def _reported_number(value: Any) -> Decimal | None:
    """A provider's figure as a non-negative finite Decimal, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    return number if number.is_finite() and number >= 0 else None


class OtherModes:
    """Embeddings, audio transcriptions and moderations, billed (or, moderations, limited) by `meter`."""

    def __init__(self, meter: Meter):
        self.meter = meter

    # ---- embeddings -----------------------------------------------------

    def embedding_params(self, entry: ModelEntry, body: EmbeddingRequest) -> dict[str, Any]:
        """What LiteLLM is sent; 400 for a parameter LiteLLM refuses for this model (before Reserve)."""
        params: dict[str, Any] = {**entry.litellm_params, "input": body.input}
        optional: dict[str, Any] = {k: v for k, v in (("encoding_format", body.encoding_format),
                                                      ("dimensions", body.dimensions)) if v is not None}
        if optional:
            try:
                model, provider, _, _ = litellm.get_llm_provider(entry.litellm_model,
                                                                 api_base=entry.litellm_params.get("api_base"))
                get_optional_params_embeddings(model=model, user=None, custom_llm_provider=provider,
                                               encoding_format=body.encoding_format, dimensions=body.dimensions)
            except Exception as exc:
                detail = str(getattr(exc, "message", "") or exc).replace("\n", " ")[:200]
                raise errors.bad_request(f"{', '.join(optional)}: not accepted for {entry.name}: {detail}",
                                         "unsupported_parameter") from None
            params.update(optional)
        return params

    def embedding_estimate(self, entry: ModelEntry, body: EmbeddingRequest) -> InputEstimate:
        pricing = self.meter.pricing
        text_counts = [pricing.count_tokens(entry, text) for text in body.texts]
        array_counts = [len(tokens) for tokens in body.token_arrays]
        _check_tokens(entry.name, text_counts + array_counts, entry.max_input_tokens,
                      self.meter.settings.embedding_max_tokens)
        return pricing.input_estimate(entry, sum(text_counts), sum(array_counts))

    async def embeddings(self, entry: ModelEntry, body: EmbeddingRequest, billing: Billing) -> JSONResponse:
        params = self.embedding_params(entry, body)
        estimate = self.embedding_estimate(entry, body)
        if billing.budget.max_cost_mc is not None and estimate.amount_mc > billing.budget.max_cost_mc:
            raise errors.max_cost_too_low(billing.budget.max_cost_mc, estimate.amount_mc,  # no output to cap
                                          "the worst case of its input")
        hold = await self.meter.reserve(billing, estimate.amount_mc, "embedding", entry,
                                        {"estimate_millicredits": estimate.amount_mc,
                                         "input_tokens": estimate.reserved_tokens},
                                        tokens=estimate.reserved_tokens)
        # Shielded: a client that goes away cannot stop the settlement of a call already made.
        task = self.meter.spawn(self._embed_once(entry, body, billing, hold, params, estimate),
                                name="settle-embedding")
        payload, headers = await asyncio.shield(task)
        return JSONResponse(payload, headers=headers)

    async def _embed_once(self, entry: ModelEntry, body: EmbeddingRequest, billing: Billing, hold: Hold,
                          params: dict[str, Any], estimate: InputEstimate) -> tuple[dict[str, Any], Headers]:
        meter = self.meter
        request = litellm.aembedding(**params, timeout=meter.upstream_timeout(hold))
        response, latency_ms = await answer(entry.name, request, lambda exc: meter.void(entry, hold, exc))
        try:
            payload: dict[str, Any] = response.model_dump(exclude_none=True)
            payload["model"] = entry.name
            usage = payload.get("usage")
            reported = _reported_number(usage.get("prompt_tokens")) if isinstance(usage, dict) else None
            if reported is not None and reported <= 0:  # LiteLLM's Usage() for an answer without usage
                reported = None
            tokens = int(reported) if reported is not None else estimate.counted_tokens
            cost_usd = meter.pricing.chat_cost_usd(entry, tokens, 0)
            charged = meter.pricing.to_millicredits(cost_usd)
            extra: dict[str, Any] = {"prompt_tokens": tokens, "total_tokens": tokens, "cost_usd": str(cost_usd),
                                     "usage_reported": reported is not None}
            counted: int | None = tokens
        except Exception:  # the call was made: if its cost cannot be read, charge the whole hold
            log.exception("usage of a %s call could not be read; charging its hold", entry.name)
            payload = {"object": "list", "model": entry.name, "data": []}
            charged, extra, counted = hold.reserved.reserved_millicredits, {"cost_unknown": True}, None
        metadata = meter.usage_metadata(entry, billing, body, estimate_millicredits=estimate.amount_mc,
                                        latency_ms=latency_ms, **extra)
        return payload, await meter.settle(hold, billing, charged, metadata, counted)

    # ---- audio transcriptions ------------------------------------------

    async def transcription(self, entry: ModelEntry, form: TranscriptionForm, audio: AudioFile, data: bytes,
                            billing: Billing) -> Response:
        estimate = self.meter.pricing.audio_worst_mc(entry, audio.worst_seconds)
        if billing.budget.max_cost_mc is not None and estimate > billing.budget.max_cost_mc:
            raise errors.max_cost_too_low(billing.budget.max_cost_mc, estimate,  # audio cannot be shortened
                                          f"{audio.worst_seconds} s of audio")
        hold = await self.meter.reserve(billing, estimate, "audio_transcription", entry,
                                        {"estimate_millicredits": estimate, "audio_seconds": audio.worst_seconds})
        task = self.meter.spawn(self._transcribe_once(entry, form, audio, data, billing, hold, estimate),
                                name="settle-transcription")
        payload, headers = await asyncio.shield(task)
        if form.response_format in TEXT_FORMATS:
            return PlainTextResponse(str(payload.get("text") or ""), headers=headers)
        return JSONResponse(payload, headers=headers)

    def transcription_params(self, entry: ModelEntry, form: TranscriptionForm, audio: AudioFile,
                             data: bytes) -> dict[str, Any]:
        # The file's name is ours (the client's could carry anything); its format was read from its bytes.
        params: dict[str, Any] = {**entry.litellm_params, "file": (f"audio.{audio.format}", data, "audio/wav"),
                                  "response_format": form.response_format}
        for name in ("language", "prompt", "temperature", "timestamp_granularities"):
            if getattr(form, name) is not None:
                params[name] = getattr(form, name)
        return params

    async def _transcribe_once(self, entry: ModelEntry, form: TranscriptionForm, audio: AudioFile, data: bytes,
                               billing: Billing, hold: Hold, estimate: int) -> tuple[dict[str, Any], Headers]:
        meter = self.meter
        params = self.transcription_params(entry, form, audio, data)
        response, latency_ms = await answer(
            entry.name, litellm.atranscription(**offline_params(params, form.response_format),
                                               timeout=meter.upstream_timeout(hold)),
            lambda exc: meter.void(entry, hold, exc))
        try:
            payload: dict[str, Any] = response.model_dump(exclude_none=True)
            seconds, source = self.billed_seconds(payload, audio)
            cost_usd = meter.pricing.audio_cost_usd(entry, seconds)
            charged = meter.pricing.to_millicredits(cost_usd)
            extra: dict[str, Any] = {"audio_seconds": str(audio.duration), "billed_seconds": str(seconds),
                                     "seconds_from": source, "audio_format": audio.format,
                                     "response_format": form.response_format, "cost_usd": str(cost_usd)}
        except Exception:
            log.exception("duration of a %s call could not be read; charging its hold", entry.name)
            payload = {"text": ""}
            charged, extra = hold.reserved.reserved_millicredits, {"cost_unknown": True}
        metadata = meter.usage_metadata(entry, billing, form, estimate_millicredits=estimate,
                                        latency_ms=latency_ms, **extra)
        return payload, await meter.settle(hold, billing, charged, metadata)

    @staticmethod
    def billed_seconds(payload: dict[str, Any], audio: AudioFile) -> tuple[Decimal, str]:
        """The seconds to charge: the provider's (usage.seconds, else verbose_json's duration), else every
        second the file's bytes could play (not the duration its header declares)."""
        usage = payload.get("usage")
        if isinstance(usage, dict) and usage.get("type") == "duration":
            reported = _reported_number(usage.get("seconds"))
            if reported is not None:
                return reported, "provider_usage"
        reported = _reported_number(payload.get("duration"))
        if reported is not None:
            return reported, "provider_duration"
        return audio.most_seconds, "file"

    # ---- moderations ----------------------------------------------------

    async def moderation(self, entry: ModelEntry, body: ModerationRequest, billing: Billing) -> JSONResponse:
        counts = [self.meter.pricing.count_tokens(entry, text) for text in body.texts]
        _check_tokens(entry.name, [sum(counts)], entry.max_input_tokens, entry.max_input_tokens)
        tokens = math.ceil(sum(counts) * PROMPT_SAFETY)  # for the tokens-per-minute check, given back at Release
        hold = await self.meter.reserve(billing, MODERATION_HOLD_MC, "moderation", entry,
                                        {"not_billed": True, "input_tokens": tokens}, tokens=tokens)
        task = self.meter.spawn(self._moderate_once(entry, body, billing, hold), name="release-moderation")
        payload, headers = await asyncio.shield(task)
        return JSONResponse(payload, headers=headers)

    async def _moderate_once(self, entry: ModelEntry, body: ModerationRequest, billing: Billing,
                             hold: Hold) -> tuple[dict[str, Any], Headers]:
        meter = self.meter
        params = {**entry.litellm_params, "input": body.sent()}
        response, _ = await answer(entry.name, litellm.amoderation(**offline_params(params),
                                                                   timeout=meter.upstream_timeout(hold)),
                                   lambda exc: meter.void(entry, hold, exc))
        await meter.client.release(hold.reservation_id, "moderation: not billed")
        reserved = hold.reserved
        payload: dict[str, Any] = response.model_dump(exclude_none=True)
        payload["model"] = entry.name
        remaining = reserved.available_millicredits + reserved.reserved_millicredits
        return payload, {**hold.headers, **billing_headers(billing, 0, remaining, reserved.funding)}
