"""Worst-case estimates before a call and real costs after it, as millicredits.

USD prices and costs are Decimal; floats from LiteLLM are converted through
their shortest repr and quantized to a picodollar, then rounded up (never
undercharge) at the rate and markup of the settings.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

import litellm

from credit_service.money import usd_to_millicredits

from .catalogue import ModelEntry

_PICODOLLAR = Decimal("1e-12")


def usd(value: float | Decimal | None) -> Decimal:
    if value is None:
        return Decimal(0)
    return Decimal(repr(value) if isinstance(value, float) else value).quantize(_PICODOLLAR, ROUND_HALF_EVEN)


class Pricing:
    def __init__(self, credits_per_usd: Decimal, markup: Decimal, max_output_tokens: int):
        self.credits_per_usd = credits_per_usd
        self.markup = markup
        self.max_output_tokens = max_output_tokens

    def to_millicredits(self, cost_usd: Decimal) -> int:
        return usd_to_millicredits(cost_usd, self.credits_per_usd, self.markup)

    def prompt_tokens(self, entry: ModelEntry, messages: list[dict]) -> int:
        return litellm.token_counter(model=entry.litellm_model, messages=messages)

    def output_budget(self, entry: ModelEntry, max_tokens: int | None) -> int:
        return max_tokens if max_tokens else min(entry.max_output_tokens, self.max_output_tokens)

    def chat_estimate(self, entry: ModelEntry, prompt_tokens: int, max_tokens: int | None, n: int) -> int:
        cost = (entry.input_cost_per_token * prompt_tokens
                + entry.output_cost_per_token * self.output_budget(entry, max_tokens)) * n
        return max(self.to_millicredits(cost), 1)

    def image_estimate(self, entry: ModelEntry, n: int) -> int:
        return max(self.to_millicredits(entry.output_cost_per_image * n), 1)

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

    def image_cost_usd(self, entry: ModelEntry, images: int, reported: float | None) -> Decimal:
        if reported is not None and not entry.price_override:
            return usd(reported)
        return entry.output_cost_per_image * images
