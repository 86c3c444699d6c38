"""Pricing at the REST edge (inference_service/billing.py, inference_service/catalogue.py).

Costs are USD as Decimal, converted at the rate and markup and rounded UP to the millicredit (never
undercharge); the worst case before a call covers every token it can be charged for. Expected
values here are computed independently, with exact fractions from the catalogue's Decimal prices.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference_service import catalogue
from inference_service.billing import (
    MESSAGE_OVERHEAD_TOKENS,
    PROMPT_SAFETY,
    REQUEST_OVERHEAD_TOKENS,
    TOOLS_OVERHEAD_TOKENS,
    Pricing,
    usd,
)
from inference_service.catalogue import DEFAULT_MAX_TOKENS_PER_IMAGE, ModelEntry

IN_PRICE = Decimal("0.000003")  # USD per input token ($3 / M)
OUT_PRICE = Decimal("0.000015")  # USD per output token ($15 / M)
RATE = Decimal(100)  # credits per USD, the service's default


def chat_entry(input_price: Decimal = IN_PRICE, output_price: Decimal = OUT_PRICE, max_output: int = 8192,
               per_image: int = DEFAULT_MAX_TOKENS_PER_IMAGE) -> ModelEntry:
    return ModelEntry(name="test-chat", mode="chat", litellm_params={"model": "openai/test-chat"},
                      input_cost_per_token=input_price, output_cost_per_token=output_price,
                      output_cost_per_image=Decimal(0), max_output_tokens=max_output, price_override=True,
                      provider="openai", max_tokens_per_image=per_image)


def image_entry(prices: dict[str, Decimal] | None = None, flat: Decimal = Decimal("0.04"),
                override: bool = True) -> ModelEntry:
    return ModelEntry(name="test-image", mode="image_generation", litellm_params={"model": "openai/test-image"},
                      input_cost_per_token=Decimal(0), output_cost_per_token=Decimal(0), output_cost_per_image=flat,
                      max_output_tokens=0, price_override=override, provider="openai", image_prices=prices or {})


def exact_mc(usd_cost: Fraction, rate: Decimal = RATE, markup: Decimal = Decimal(0)) -> Fraction:
    return usd_cost * Fraction(rate) * (1 + Fraction(markup)) * 1000


def exact_chat_mc(entry: ModelEntry, prompt: int, completion: int, markup: Decimal = Decimal(0)) -> Fraction:
    cost = prompt * Fraction(entry.input_cost_per_token) + completion * Fraction(entry.output_cost_per_token)
    return exact_mc(cost, markup=markup)


def chat(*contents: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": c} for c in contents]}


# ---- USD amounts ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    (None, "0"),
    (0.1, "0.100000000000"),  # the float's shortest repr, not its binary expansion
    (0.1 + 0.2, "0.300000000000"),
    (3e-06 * 1250, "0.003750000000"),
    (2.5e-12, "2E-12"),  # a picodollar, half to even
    (3.5e-12, "4E-12"),
    (Decimal("1.23456789012345"), "1.234567890123"),
])
def test_usd_is_a_decimal_to_the_picodollar(value: float | Decimal | None, expected: str) -> None:
    amount = usd(value)
    assert isinstance(amount, Decimal)
    assert amount == Decimal(expected)


# ---- USD -> millicredits at the rate and markup --------------------------------------------------

@pytest.mark.parametrize(("cost", "rate", "markup", "mc"), [
    ("0.03", "100", "0", 3000),
    ("0.03", "100", "0.2", 3600),
    ("0.0000001", "100", "0", 1),  # 0.01 mc
    ("0.000015", "100", "0.15", 2),  # 1.725 mc
    ("0.03", "133.33", "0", 4000),  # 3999.9 mc
])
def test_to_millicredits_applies_rate_and_markup_and_rounds_up(cost: str, rate: str, markup: str, mc: int) -> None:
    assert Pricing(Decimal(rate), Decimal(markup), 4096).to_millicredits(Decimal(cost)) == mc


@given(picodollars=st.integers(min_value=0, max_value=10**16),
       rate=st.decimals(min_value=Decimal("0.01"), max_value=Decimal(10_000), places=2),
       markup=st.decimals(min_value=Decimal(0), max_value=Decimal("9.99"), places=2))
def test_a_charge_is_the_exact_cost_rounded_up(picodollars: int, rate: Decimal, markup: Decimal) -> None:
    """charge >= exact cost and < exact cost + 1 millicredit, for costs to the picodollar up to
    $10,000, rates to the cent and markups to the percent (products within Decimal's 28 digits)."""
    cost = Decimal(picodollars).scaleb(-12)
    charged = Pricing(rate, markup, 4096).to_millicredits(cost)
    exact = exact_mc(Fraction(picodollars, 10**12), rate, markup)
    assert type(charged) is int
    assert exact <= charged < exact + 1


@settings(deadline=None)
@given(prompt=st.integers(min_value=0, max_value=2_000_000), completion=st.integers(min_value=0, max_value=200_000),
       in_nano=st.integers(min_value=0, max_value=100_000), out_nano=st.integers(min_value=0, max_value=100_000),
       markup=st.sampled_from([Decimal(0), Decimal("0.2"), Decimal("0.15")]))
def test_a_chat_charge_is_the_exact_token_cost_rounded_up(prompt: int, completion: int, in_nano: int,
                                                          out_nano: int, markup: Decimal) -> None:
    """The whole path a Commit takes (LiteLLM's cost with our price override, then millicredits)
    against tokens × catalogue price computed exactly: prices to the nanodollar per token."""
    entry = chat_entry(Decimal(in_nano).scaleb(-9), Decimal(out_nano).scaleb(-9))
    pricing = Pricing(RATE, markup, 4096)
    charged = pricing.to_millicredits(pricing.chat_cost_usd(entry, prompt, completion))
    exact = exact_chat_mc(entry, prompt, completion, markup)
    assert exact <= charged < exact + 1


# ---- the worst case before a chat call -----------------------------------------------------------

def test_the_output_budget_is_the_request_capped_by_the_model_else_the_service_cap() -> None:
    pricing = Pricing(RATE, Decimal(0), max_output_tokens=4096)
    assert pricing.output_budget(chat_entry(max_output=8192), 100) == 100
    assert pricing.output_budget(chat_entry(max_output=8192), 50_000) == 8192
    assert pricing.output_budget(chat_entry(max_output=8192), None) == 4096
    assert pricing.output_budget(chat_entry(max_output=1024), None) == 1024


def test_a_chat_estimate_pays_for_the_safety_factor_the_overheads_and_the_whole_output() -> None:
    pricing = Pricing(RATE, Decimal(0), 4096)
    entry = chat_entry()
    text = "Analyze this company: ACME Corp, 120 employees"
    estimate = pricing.chat_estimate(entry, chat(text), 200, n=3)
    content_tokens = pricing.count_tokens(entry, text)
    assert content_tokens > 5
    assert estimate.counted_prompt_tokens >= content_tokens + MESSAGE_OVERHEAD_TOKENS + REQUEST_OVERHEAD_TOKENS
    assert estimate.reserved_prompt_tokens == math.ceil(estimate.counted_prompt_tokens * Fraction(PROMPT_SAFETY))
    assert PROMPT_SAFETY == Decimal("1.25")
    assert (estimate.max_tokens, estimate.n) == (200, 3)
    assert estimate.amount_mc == math.ceil(exact_chat_mc(entry, estimate.reserved_prompt_tokens, 200 * 3))


def test_without_max_tokens_the_hold_pays_for_the_service_cap() -> None:
    estimate = Pricing(RATE, Decimal(0), max_output_tokens=4096).chat_estimate(chat_entry(), chat("hi"), None, 1)
    assert estimate.max_tokens == 4096
    assert estimate.amount_mc >= math.ceil(exact_chat_mc(chat_entry(), 0, 4096))


def test_every_message_adds_its_overhead() -> None:
    pricing = Pricing(RATE, Decimal(0), 4096)
    one = pricing.chat_estimate(chat_entry(), chat("a"), 10, 1)
    three = pricing.chat_estimate(chat_entry(), chat("a", "a", "a"), 10, 1)
    assert three.counted_prompt_tokens - one.counted_prompt_tokens >= 2 * MESSAGE_OVERHEAD_TOKENS


@pytest.mark.parametrize(("name", "value"), [
    ("tool_choice", {"type": "function", "function": {"name": "lookup_company_records"}}),
    ("response_format", {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}}),
    ("stop", ["END OF ANSWER", "STOP HERE"]),
])
def test_what_else_is_sent_is_counted(name: str, value: Any) -> None:
    pricing = Pricing(RATE, Decimal(0), 4096)
    bare = pricing.chat_estimate(chat_entry(), chat("hello"), 10, 1)
    extra = pricing.chat_estimate(chat_entry(), {**chat("hello"), name: value}, 10, 1)
    sent = pricing.count_tokens(chat_entry(), json.dumps(value, separators=(",", ":")))
    assert extra.counted_prompt_tokens - bare.counted_prompt_tokens >= sent - 1  # joined by one newline


def test_tools_add_their_schema_and_the_providers_preamble() -> None:
    pricing = Pricing(RATE, Decimal(0), 4096)
    tools = [{"type": "function", "function": {"name": "lookup", "description": "Find a company by name",
                                               "parameters": {"type": "object", "properties": {
                                                   "name": {"type": "string"}}}}}]
    bare = pricing.chat_estimate(chat_entry(), chat("hello"), 10, 1)
    with_tools = pricing.chat_estimate(chat_entry(), {**chat("hello"), "tools": tools}, 10, 1)
    schema = pricing.count_tokens(chat_entry(), json.dumps(tools, separators=(",", ":")))
    assert with_tools.counted_prompt_tokens - bare.counted_prompt_tokens >= TOOLS_OVERHEAD_TOKENS + schema - 1


def test_tool_calls_and_names_in_messages_are_counted() -> None:
    pricing = Pricing(RATE, Decimal(0), 4096)
    call = {"id": "call_1", "type": "function",
            "function": {"name": "lookup", "arguments": json.dumps({"name": "ACME " * 200})}}
    bare = pricing.chat_estimate(chat_entry(), {"messages": [{"role": "assistant", "content": None}]}, 10, 1)
    with_call = pricing.chat_estimate(
        chat_entry(), {"messages": [{"role": "assistant", "content": None, "tool_calls": [call]}]}, 10, 1)
    assert with_call.counted_prompt_tokens - bare.counted_prompt_tokens >= 200


def test_each_image_is_counted_at_the_models_largest_and_its_url_is_not_fetched() -> None:
    pricing = Pricing(RATE, Decimal(0), 4096)
    entry = chat_entry(per_image=5000)

    def with_images(count: int, url: str) -> dict[str, Any]:
        parts = [{"type": "text", "text": "what is this?"}]
        parts += [{"type": "image_url", "image_url": {"url": url, "detail": "high"}}] * count
        return {"messages": [{"role": "user", "content": parts}]}

    none = pricing.chat_estimate(entry, with_images(0, ""), 10, 1)
    two = pricing.chat_estimate(entry, with_images(2, "https://images.invalid/a.png"), 10, 1)
    assert two.counted_prompt_tokens - none.counted_prompt_tokens >= 2 * 5000
    long_url = pricing.chat_estimate(entry, with_images(2, "https://images.invalid/" + "a" * 10_000), 10, 1)
    assert long_url.counted_prompt_tokens == two.counted_prompt_tokens


def test_a_free_model_still_holds_one_millicredit() -> None:
    free = chat_entry(Decimal(0), Decimal(0))
    assert Pricing(RATE, Decimal(0), 4096).chat_estimate(free, chat("hi"), 10, 1).amount_mc == 1


messages = st.lists(st.text(max_size=300), min_size=1, max_size=6)


@settings(deadline=None, max_examples=60)
@given(contents=messages, requested=st.one_of(st.none(), st.integers(min_value=1, max_value=20_000)),
       n=st.integers(min_value=1, max_value=16), data=st.data())
def test_no_usage_within_the_budget_costs_more_than_the_hold(contents: list[str], requested: int | None, n: int,
                                                             data: st.DataObject) -> None:
    """The hold covers any charge for up to the reserved input tokens and the whole output budget."""
    pricing = Pricing(RATE, Decimal("0.2"), 4096)
    entry = chat_entry()
    estimate = pricing.chat_estimate(entry, chat(*contents), requested, n)
    content = sum(pricing.count_tokens(entry, c) for c in contents)
    assert estimate.reserved_prompt_tokens >= math.ceil(
        (content + MESSAGE_OVERHEAD_TOKENS * len(contents) + REQUEST_OVERHEAD_TOKENS) * Fraction(PROMPT_SAFETY))
    assert estimate.max_tokens == min(requested or 4096, entry.max_output_tokens)
    prompt = data.draw(st.integers(min_value=0, max_value=estimate.reserved_prompt_tokens))
    completion = data.draw(st.integers(min_value=0, max_value=estimate.max_tokens * n))
    charge = pricing.to_millicredits(pricing.chat_cost_usd(entry, prompt, completion))
    assert charge <= estimate.amount_mc


# ---- images ---------------------------------------------------------------------------------------

DALL_E = {"standard/1024x1024": Decimal("0.04"), "hd/1024x1792": Decimal("0.12")}


def test_images_are_held_at_the_requested_quality_and_size() -> None:
    pricing = Pricing(RATE, Decimal(0), 4096)
    assert pricing.image_estimate(image_entry(DALL_E), 1, None, None) == 4000  # standard/1024x1024
    assert pricing.image_estimate(image_entry(DALL_E), 3, "hd", "1024x1792") == 36_000
    assert pricing.image_estimate(image_entry(), 2, "hd", "1024x1792") == 8000  # one flat price
    assert pricing.image_estimate(image_entry(flat=Decimal(0)), 1, None, None) == 1  # never a free hold


def test_an_image_size_the_catalogue_does_not_offer_is_refused() -> None:
    with pytest.raises(ValueError, match="not hd/1024x1024"):
        Pricing(RATE, Decimal(0), 4096).image_estimate(image_entry(DALL_E), 1, "hd", "1024x1024")


def test_an_image_charge_is_the_catalogue_price_when_it_has_one_else_what_litellm_reports() -> None:
    pricing = Pricing(RATE, Decimal(0), 4096)
    assert pricing.image_cost_usd(image_entry(DALL_E), 2, "hd", "1024x1792", reported=0.01) == Decimal("0.24")
    assert pricing.image_cost_usd(image_entry(override=False), 2, None, None, reported=0.08) == Decimal("0.08")
    assert pricing.image_cost_usd(image_entry(override=False), 2, None, None, reported=None) == Decimal("0.08")


# ---- the catalogue --------------------------------------------------------------------------------

CATALOGUE = """
model_list:
  - model_name: cheap-chat
    litellm_params: {model: openai/cheap-chat, api_key: os.environ/TEST_PROVIDER_KEY}
    model_info: {input_cost_per_token: 0.000001, output_cost_per_token: 0.000002, max_output_tokens: 1024,
                 max_tokens_per_image: 3000}
  - model_name: keyless-chat
    litellm_params: {model: openai/keyless-chat, api_key: os.environ/UNSET_PROVIDER_KEY}
    model_info: {input_cost_per_token: 0.000001, output_cost_per_token: 0.000002}
  - model_name: unpriced-chat
    litellm_params: {model: openai/no-such-model-anywhere, api_key: literal}
  - model_name: pictures
    litellm_params: {model: openai/pictures, api_key: literal}
    model_info:
      mode: image_generation
      output_cost_per_image: 0.04
      image_prices: {standard/1024x1024: 0.04, hd/1024x1792: 0.12}
  - model_name: unpriced-pictures
    litellm_params: {model: openai/unpriced-pictures, api_key: literal}
    model_info: {mode: image_generation}
"""


def test_the_catalogue_loads_prices_as_exact_decimals_and_switches_off_what_it_cannot_price(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(CATALOGUE)
    entries = catalogue.load(path, env={"TEST_PROVIDER_KEY": "sk-test"})
    assert sorted(entries) == ["cheap-chat", "pictures"]
    cheap = entries["cheap-chat"]
    assert cheap.litellm_params["api_key"] == "sk-test"
    assert (cheap.input_cost_per_token, cheap.output_cost_per_token) == (Decimal("0.000001"), Decimal("0.000002"))
    assert (cheap.mode, cheap.provider, cheap.price_override) == ("chat", "openai", True)
    assert (cheap.max_output_tokens, cheap.max_tokens_per_image) == (1024, 3000)
    pictures = entries["pictures"]
    assert pictures.image_prices == {"standard/1024x1024": Decimal("0.04"), "hd/1024x1792": Decimal("0.12")}
    assert pictures.image_price("hd", "1024x1792") == Decimal("0.12")
    assert pictures.image_price(None, None) == Decimal("0.04")


def test_the_shipped_catalogue_serves_the_offline_models_without_provider_keys() -> None:
    entries = catalogue.load(Path(catalogue.__file__).with_name("models.yaml"), env={})
    assert {"demo-chat", "demo-image"} <= set(entries)
    assert "gpt-4o" not in entries  # needs OPENAI_API_KEY
    assert entries["demo-chat"].is_mock
    assert entries["demo-chat"].input_cost_per_token == Decimal("0.000001")
    assert entries["demo-image"].image_price(None, None) == Decimal("0.04")
