"""Worst-case estimates before a call and real costs after it, as millicredits.

USD prices and costs are Decimal; floats from LiteLLM are converted through
their shortest repr and quantized to a picodollar, then rounded up (never
undercharge) at the rate and markup of the settings.

The worst case covers everything sent to the provider, counted without any
network access: every message (text, names, tool calls and their ids), the
tool and function schemas, `tool_choice`, `response_format` and `stop`, a
fixed overhead per message and per request, a provider's tool-use preamble
when tools are sent, and each image part at the largest size the model can
bill (`model_info.max_tokens_per_image`). The text count is multiplied by
`PROMPT_SAFETY` because providers' tokenizers differ from the one counted
here. The output side is exact: the provider is always sent `max_tokens` equal
to the budget the hold paid for (per choice, times `n`). Both sides are priced
by the same function as the final charge, so tiered prices are covered too.

The overrun bound that follows: a Commit exceeds its hold only when the
provider counts more input tokens than `reserved_prompt_tokens`, i.e. more
than 1.25 × our count of the text plus the overheads; the excess charged is
then at most (provider's input tokens − reserved_prompt_tokens) × the input
price, and the usage row is flagged `overrun`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import litellm
from litellm.litellm_core_utils.default_encoding import encoding as _cl100k

from credit_service.money import usd_to_millicredits

from .catalogue import ModelEntry

_PICODOLLAR = Decimal("1e-12")
PROMPT_SAFETY = Decimal("1.25")  # our token count × this covers other providers' tokenizers
MESSAGE_OVERHEAD_TOKENS = 8  # role markers and separators per message
REQUEST_OVERHEAD_TOKENS = 16  # the reply's priming and framing
TOOLS_OVERHEAD_TOKENS = 512  # a provider's tool-use system preamble (Anthropic's is ~350)
# tiktoken's cl100k_base, loaded by LiteLLM from the copy it ships (TIKTOKEN_CACHE_DIR): no download.
_ENCODING = _cl100k


def usd(value: float | Decimal | None) -> Decimal:
    if value is None:
        return Decimal(0)
    return Decimal(repr(value) if isinstance(value, float) else value).quantize(_PICODOLLAR, ROUND_HALF_EVEN)


@dataclass(frozen=True)
class ChatEstimate:
    """What a chat call may cost at worst, and the counts it rests on."""

    counted_prompt_tokens: int  # our honest count of the input (cut streams are charged this)
    reserved_prompt_tokens: int  # the input the hold pays for (with PROMPT_SAFETY)
    max_tokens: int  # sent to the provider: the output per choice the hold pays for
    n: int
    amount_mc: int

    @property
    def tokens(self) -> int:
        """The tokens it may use at worst (tokens-per-minute limits): the input paid for and the output cap."""
        return self.reserved_prompt_tokens + self.max_tokens * self.n


@dataclass(frozen=True)
class InputEstimate:
    """What a call billed for its input alone (embeddings) may cost at worst."""

    counted_tokens: int  # our count (charged when the provider reports no usage)
    reserved_tokens: int  # what the hold pays for: text with PROMPT_SAFETY, token arrays as they are
    amount_mc: int


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _message_text(message: dict[str, Any]) -> tuple[list[str], int]:
    """The text of one message as sent, and how many image parts it has."""
    texts = [str(message.get("role", "")), str(message.get("name") or ""), str(message.get("tool_call_id") or "")]
    images = 0
    content = message.get("content")
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for part in content:
            if part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            else:
                images += 1
                texts.append(str((part.get("image_url") or {}).get("detail") or ""))
    for name in ("tool_calls", "function_call", "refusal"):
        if message.get(name):
            texts.append(_compact(message[name]))
    return texts, images


class Pricing:
    def __init__(self, credits_per_usd: Decimal, markup: Decimal, max_output_tokens: int):
        self.credits_per_usd = credits_per_usd
        self.markup = markup
        self.max_output_tokens = max_output_tokens

    def to_millicredits(self, cost_usd: Decimal) -> int:
        return usd_to_millicredits(cost_usd, self.credits_per_usd, self.markup)

    def count_tokens(self, entry: ModelEntry, text: str) -> int:
        """Tokens of plain text, by the tiktoken encoding LiteLLM ships (cl100k_base): never a network
        fetch (no image URLs, no tokenizer downloads), the same count for every model; PROMPT_SAFETY
        covers the providers whose tokenizers count more."""
        return len(_ENCODING.encode(text, disallowed_special=())) if text else 0

    def output_budget(self, entry: ModelEntry, requested: int | None) -> int:
        """The output per choice the hold pays for, and the `max_tokens` the provider is sent."""
        if requested:
            return min(requested, entry.max_output_tokens)
        return min(entry.max_output_tokens, self.max_output_tokens)

    def chat_estimate(self, entry: ModelEntry, params: dict[str, Any], requested_max_tokens: int | None,
                      n: int) -> ChatEstimate:
        """The worst case of a chat call whose LiteLLM params (messages, tools, …) are `params`."""
        texts: list[str] = []
        images = 0
        for message in params["messages"]:
            message_texts, message_images = _message_text(message)
            texts.extend(message_texts)
            images += message_images
        for name in ("tools", "functions", "tool_choice", "response_format", "stop"):
            if params.get(name) is not None:
                texts.append(_compact(params[name]))
        counted = (self.count_tokens(entry, "\n".join(texts)) + images * entry.max_tokens_per_image
                   + MESSAGE_OVERHEAD_TOKENS * len(params["messages"]) + REQUEST_OVERHEAD_TOKENS
                   + (TOOLS_OVERHEAD_TOKENS if params.get("tools") or params.get("functions") else 0))
        reserved = math.ceil(counted * PROMPT_SAFETY)
        max_tokens = self.output_budget(entry, requested_max_tokens)
        return ChatEstimate(counted, reserved, max_tokens, n, self.chat_worst_mc(entry, reserved, max_tokens, n))

    def chat_worst_mc(self, entry: ModelEntry, prompt_tokens: int, max_tokens: int, n: int) -> int:
        """The hold for `prompt_tokens` of input and `max_tokens` of output per choice: priced like the charge."""
        return max(self.to_millicredits(self.chat_cost_usd(entry, prompt_tokens, max_tokens * n)), 1)

    def fit(self, entry: ModelEntry, estimate: ChatEstimate, ceiling_mc: int) -> ChatEstimate | None:
        """The estimate with the largest `max_tokens` (at most its own) whose worst case is at most
        `ceiling_mc`, the input unchanged; None when not even one output token per choice fits. Prices
        never fall as tokens grow, so a binary search over the exact integer price finds it."""
        if estimate.amount_mc <= ceiling_mc:
            return estimate
        low, high = 0, estimate.max_tokens  # worst(low) fits (or low = 0), worst(high) does not
        while high - low > 1:
            middle = (low + high) // 2
            if self.chat_worst_mc(entry, estimate.reserved_prompt_tokens, middle, estimate.n) <= ceiling_mc:
                low = middle
            else:
                high = middle
        if low == 0:
            return None
        return replace(estimate, max_tokens=low,
                       amount_mc=self.chat_worst_mc(entry, estimate.reserved_prompt_tokens, low, estimate.n))

    def image_estimate(self, entry: ModelEntry, n: int, quality: str | None, size: str | None) -> int:
        return max(self.to_millicredits(entry.image_price(quality, size) * n), 1)

    def input_estimate(self, entry: ModelEntry, text_tokens: int, exact_tokens: int) -> InputEstimate:
        """The worst case of a call billed for its input only (embeddings): `text_tokens` as counted here
        (times PROMPT_SAFETY), `exact_tokens` (token arrays: one token each) as they are."""
        reserved = math.ceil(text_tokens * PROMPT_SAFETY) + exact_tokens
        return InputEstimate(text_tokens + exact_tokens, reserved, self.input_worst_mc(entry, reserved))

    def input_worst_mc(self, entry: ModelEntry, tokens: int) -> int:
        return max(self.to_millicredits(self.chat_cost_usd(entry, tokens, 0)), 1)

    def audio_cost_usd(self, entry: ModelEntry, seconds: Decimal) -> Decimal:
        """Audio priced per second (the catalogue's input_cost_per_second), to the picodollar."""
        return usd(entry.input_cost_per_second * seconds)

    def audio_worst_mc(self, entry: ModelEntry, seconds: int) -> int:
        return max(self.to_millicredits(self.audio_cost_usd(entry, Decimal(seconds))), 1)

    def chat_cost_usd(self, entry: ModelEntry, prompt_tokens: int, completion_tokens: int) -> Decimal:
        """What LiteLLM says these tokens cost (with our price override when the catalogue has one)."""
        custom = None
        if entry.price_override:
            custom = {"input_cost_per_token": float(entry.input_cost_per_token),
                      "output_cost_per_token": float(entry.output_cost_per_token)}
        prompt_cost, completion_cost = litellm.cost_per_token(
            model=entry.litellm_model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
            custom_cost_per_token=custom)
        return usd(prompt_cost) + usd(completion_cost)

    def image_cost_usd(self, entry: ModelEntry, images: int, quality: str | None, size: str | None,
                       reported: float | None) -> Decimal:
        """The catalogue's price for the requested quality/size, or LiteLLM's when the catalogue has none."""
        if reported is not None and not entry.price_override:
            return usd(reported)
        return entry.image_price(quality, size) * images
