"""Billed at the right price for real providers (issue 11, item 10).

The catalogue's real entries for gpt-4o, claude-sonnet-4, an OpenRouter model,
dall-e-3, text-embedding-3-small, whisper-1 and omni-moderation-latest are
taken from inference_service/models.yaml unchanged, except
that api_base points at local servers answering in each provider's own wire
format (tests/provider_upstreams.py) and api_key is a dummy literal. Each call
goes through the official openai SDK, streamed and not, and each charge must
equal the tokens the provider reported × the price the catalogue resolves for
that entry, at 100 credits per USD, no markup, rounded up to the millicredit.

LiteLLM's cost map may know no price for an entry (then the shipped catalogue
switches it off). So that the Anthropic and OpenRouter wire formats are billed
through the service all the same, the catalogue also carries a "-priced" copy
of those two entries with a price pinned in model_info (the same fields an
operator would add); everything else in the copy is the shipped entry.
"""

from __future__ import annotations

import asyncio
import copy
import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any, Literal

import asyncpg
import pytest
import yaml
from conftest import ROOT, AuthorityProcess, Stub, Tokens, World, free_port
from media_support import wav
from openai.types.chat import ChatCompletionMessageParam
from provider_upstreams import (
    ANSWER,
    ANTHROPIC_USAGE,
    OPENAI_USAGE,
    OPENROUTER_USAGE,
    ProviderUpstreams,
    Seen,
    Usage,
)
from rest_support import Account, InferenceProcess, make_key, sdk

from inference_service import catalogue

CREDITS_PER_USD = Decimal(100)  # the service's default rate; no markup
MILLICREDITS_PER_CREDIT = 1000
MAX_TOKENS = 4000  # every chat call's output cap: the hold covers the distinctive usage the fakes report
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What does this call cost?"}]

SHIPPED = ("gpt-4o", "claude-sonnet-4", "openrouter-llama-3.1-8b", "dall-e-3", "text-embedding-3-small",
           "whisper-1", "omni-moderation-latest")
# Pinned prices for the "-priced" copies, USD per token: Anthropic's list price
# for Claude Sonnet 4 ($3 / $15 per million tokens); for Llama 3.1 8B Instruct on
# OpenRouter $0.02 / $0.03 per million (of the order OpenRouter lists; its
# providers vary). Input and output differ, so a swap shows.
PINNED_PRICES = {
    "claude-sonnet-4": {"input_cost_per_token": 0.000003, "output_cost_per_token": 0.000015},
    "openrouter-llama-3.1-8b": {"input_cost_per_token": 0.00000002, "output_cost_per_token": 0.00000003},
}


@dataclass(frozen=True)
class ChatCase:
    model: str  # the catalogue's model_name, as clients send it
    provider: str  # the fake provider that answers (LiteLLM's provider prefix)
    upstream_model: str  # the model id the provider receives
    usage: Usage  # what that provider reports

    def __str__(self) -> str:
        return self.model


CHAT_CASES = [
    ChatCase("gpt-4o", "openai", "gpt-4o", OPENAI_USAGE),
    ChatCase("claude-sonnet-4", "anthropic", "claude-sonnet-4-20250514", ANTHROPIC_USAGE),
    ChatCase("openrouter-llama-3.1-8b", "openrouter", "meta-llama/llama-3.1-8b-instruct", OPENROUTER_USAGE),
    ChatCase("claude-sonnet-4-priced", "anthropic", "claude-sonnet-4-20250514", ANTHROPIC_USAGE),
    ChatCase("openrouter-llama-3.1-8b-priced", "openrouter", "meta-llama/llama-3.1-8b-instruct",
             OPENROUTER_USAGE),
]


# ---- the catalogue under test --------------------------------------------------------


def write_provider_catalogue(path: Path, api_bases: dict[str, str]) -> Path:
    """The shipped entries, pointed at the fake providers, plus the "-priced" copies."""
    shipped = {m["model_name"]: m for m in yaml.safe_load((ROOT / "inference_service" / "models.yaml").read_text())
               ["model_list"]}
    entries: list[dict[str, Any]] = []
    for name in SHIPPED:
        entry = copy.deepcopy(shipped[name])
        provider = entry["litellm_params"]["model"].split("/", 1)[0]
        entry["litellm_params"]["api_base"] = api_bases[provider]
        entry["litellm_params"]["api_key"] = f"dummy-{provider}-key"
        entries.append(entry)
    for name, prices in PINNED_PRICES.items():
        entry = copy.deepcopy(next(e for e in entries if e["model_name"] == name))
        entry["model_name"] = f"{name}-priced"
        entry["model_info"] = {**(entry.get("model_info") or {}), **prices}
        entries.append(entry)
    path.write_text(yaml.safe_dump({"model_list": entries}))
    return path


@dataclass(frozen=True)
class Env:
    inference: InferenceProcess
    providers: ProviderUpstreams
    prices: dict[str, catalogue.ModelEntry]  # what the catalogue resolves, loaded as the service loads it


@pytest.fixture(scope="module")
def env(authority: AuthorityProcess, tokens: Tokens) -> Iterator[Env]:
    providers = ProviderUpstreams(free_port).start()
    models_file = write_provider_catalogue(Path(tempfile.mkdtemp(prefix="provider-models-")) / "models.yaml",
                                           providers.api_bases)
    # HF_HUB_OFFLINE: LiteLLM counts Llama prompts with a Hugging Face tokenizer it
    # downloads; with no network here that costs ~23 s of retries before falling back.
    inference = InferenceProcess(authority, tokens.spend, models_file, {"HF_HUB_OFFLINE": "1"}).start()
    try:
        yield Env(inference, providers, catalogue.load(models_file, env={}))
    finally:
        inference.stop()
        providers.stop()


@pytest.fixture
def payer(world: World, admin: Stub) -> Account:
    """A member with 1,000 credits (gpt-4o and dall-e-3 are not cheap) and an unbound user key."""
    org_id, user_id = world.funded_member(allocation_mc=1_000_000, pool_mc=1_000_000)
    key, key_id = make_key(admin, user_id)
    return Account(user_id, org_id, key, key_id)


# ---- the expected charge, computed here ------------------------------------------------


def to_millicredits(usd: Decimal) -> int:
    """USD → millicredits at 100 credits per USD, no markup, rounded up."""
    return int((usd * CREDITS_PER_USD * MILLICREDITS_PER_CREDIT).to_integral_value(rounding=ROUND_CEILING))


def resolved(env: Env, model: str) -> catalogue.ModelEntry:
    entry = env.prices.get(model)
    assert entry is not None, (
        f"the catalogue resolves no price for {model!r}: catalogue.load switched the shipped entry off, so the "
        f"service answers 404 for it")
    return entry


def chat_charge(entry: catalogue.ModelEntry, usage: Usage) -> int:
    assert entry.input_cost_per_token > 0 and entry.output_cost_per_token > 0, (
        f"{entry.name} resolves to a zero price: in {entry.input_cost_per_token}, out {entry.output_cost_per_token}")
    return to_millicredits(entry.input_cost_per_token * usage.prompt + entry.output_cost_per_token * usage.completion)


def credits_text(millicredits: int) -> str:
    """Millicredits as REST shows credits: three places."""
    return str((Decimal(millicredits) / MILLICREDITS_PER_CREDIT).quantize(Decimal("0.001")))


async def attribution(db: asyncpg.Connection, user_id: str, request_id: str) -> asyncpg.Record:
    """The attribution row of one request; a stream's may be written just after its last byte."""
    deadline = time.monotonic() + 30
    while True:
        row = await db.fetchrow("SELECT * FROM usage_attribution WHERE user_id = $1 "
                                "AND request_metadata->>'request_id' = $2", user_id, request_id)
        if row is not None or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert row is not None, f"request {request_id} left no attribution row"
    return row


def assert_row(row: asyncpg.Record, model: str, charge_mc: int, usage: Usage | None = None) -> None:
    metadata = json.loads(row["request_metadata"])
    assert row["service_name"] == model
    if usage is not None:
        assert (metadata.get("prompt_tokens"), metadata.get("completion_tokens")) == (usage.prompt, usage.completion), \
            "the attribution row does not carry the tokens the provider reported"
    assert row["credits_used"] == charge_mc


# Where LiteLLM sends each provider's chat calls, under the entry's api_base.
CHAT_PATHS = {"openai": "/v1/chat/completions", "openrouter": "/api/v1/chat/completions",
              "anthropic": "/v1/messages"}
# How each provider is sent the entry's api_key (the dummy literal in the catalogue).
CREDENTIALS = {"openai": ("authorization", "Bearer dummy-openai-key"),
               "openrouter": ("authorization", "Bearer dummy-openrouter-key"),
               "anthropic": ("x-api-key", "dummy-anthropic-key")}


def only_request(seen: list[Seen], provider: str) -> Seen:
    """The one request this call made, to `provider`, with that provider's credential header."""
    assert [s.provider for s in seen] == [provider], f"expected one request to {provider}, got {seen}"
    assert (seen[0].auth, seen[0].credential) == CREDENTIALS[provider]
    return seen[0]


# ---- the catalogue resolves a non-zero price for every real entry --------------------


@pytest.mark.parametrize("model", SHIPPED)
def test_the_catalogue_resolves_a_price_for_every_real_entry(env: Env, model: str) -> None:
    entry = resolved(env, model)
    if entry.mode == "chat":
        assert entry.input_cost_per_token > 0 and entry.output_cost_per_token > 0
    elif entry.mode == "image_generation":
        assert entry.output_cost_per_image > 0
    elif entry.mode == "embedding":
        assert entry.input_cost_per_token > 0
    elif entry.mode == "audio_transcription":
        assert entry.input_cost_per_second > 0
    else:
        assert entry.mode == "moderation"  # served free


# ---- embeddings, transcriptions and moderations of the shipped OpenAI entries ------------------


async def test_shipped_embeddings_transcription_and_moderation_entries_are_billed_at_their_price(
        env: Env, payer: Account, db: asyncpg.Connection) -> None:
    client = sdk(env.inference, payer.key)
    # embeddings: LiteLLM's cost-map price × the provider's usage (1,234 tokens), not our count of the input (~1,900)
    mark = env.providers.recorder.mark()
    raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input="ledger " * 1900)
    seen = only_request(env.providers.recorder.since(mark), "openai")
    assert (seen.path, seen.model) == ("/v1/embeddings", "text-embedding-3-small")
    assert raw.parse().usage.prompt_tokens == OPENAI_USAGE.prompt
    entry = resolved(env, "text-embedding-3-small")
    assert entry.input_cost_per_token > 0
    row = await attribution(db, payer.user_id, raw.headers["X-Request-Id"])
    assert_row(row, "text-embedding-3-small", to_millicredits(entry.input_cost_per_token * OPENAI_USAGE.prompt))
    assert raw.headers["X-Cost-Incurred"] == credits_text(row["credits_used"])

    # transcription: the catalogue's per-second price × the seconds the provider reports (3, for 2.5 s of audio)
    mark = env.providers.recorder.mark()
    raw_t = client.audio.transcriptions.with_raw_response.create(model="whisper-1",
                                                                 file=("a.wav", wav(2.5), "audio/wav"))
    seen = only_request(env.providers.recorder.since(mark), "openai")
    assert (seen.path, seen.model) == ("/v1/audio/transcriptions", "whisper-1")
    assert raw_t.parse().text == ANSWER
    per_second = resolved(env, "whisper-1").input_cost_per_second
    row = await attribution(db, payer.user_id, raw_t.headers["X-Request-Id"])
    assert_row(row, "whisper-1", to_millicredits(per_second * 3))

    # moderation: reaches the provider, charges nothing, writes no attribution row
    mark = env.providers.recorder.mark()
    raw_m = client.moderations.with_raw_response.create(model="omni-moderation-latest", input="is this fine?")
    seen = only_request(env.providers.recorder.since(mark), "openai")
    assert (seen.path, seen.model) == ("/v1/moderations", "omni-moderation-latest")
    assert raw_m.parse().results[0].flagged is False and raw_m.headers["X-Cost-Incurred"] == "0.000"
    assert await db.fetchval("SELECT count(*) FROM usage_attribution WHERE request_metadata->>'request_id' = $1",
                             raw_m.headers["X-Request-Id"]) == 0


# ---- chat, not streamed ----------------------------------------------------------------


@pytest.mark.parametrize("case", CHAT_CASES, ids=str)
async def test_chat_is_billed_at_the_catalogue_price(env: Env, payer: Account, db: asyncpg.Connection,
                                                     case: ChatCase) -> None:
    expected = chat_charge(resolved(env, case.model), case.usage)
    mark = env.providers.recorder.mark()
    raw = sdk(env.inference, payer.key).chat.completions.with_raw_response.create(
        model=case.model, messages=MESSAGES, max_tokens=MAX_TOKENS)
    completion = raw.parse()

    seen = only_request(env.providers.recorder.since(mark), case.provider)
    assert (seen.path, seen.model, seen.stream, seen.max_tokens) == (
        CHAT_PATHS[case.provider], case.upstream_model, False, MAX_TOKENS)
    assert completion.choices[0].message.content == ANSWER
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        case.usage.prompt, case.usage.completion)
    assert raw.headers["X-Cost-Incurred"] == credits_text(expected)
    row = await attribution(db, payer.user_id, raw.headers["X-Request-Id"])
    assert_row(row, case.model, expected, case.usage)


# ---- chat, streamed --------------------------------------------------------------------


@pytest.mark.parametrize("case", CHAT_CASES, ids=str)
async def test_streamed_chat_is_billed_at_the_catalogue_price(env: Env, payer: Account, db: asyncpg.Connection,
                                                              case: ChatCase) -> None:
    expected = chat_charge(resolved(env, case.model), case.usage)
    mark = env.providers.recorder.mark()
    with sdk(env.inference, payer.key).chat.completions.with_streaming_response.create(
            model=case.model, messages=MESSAGES, max_tokens=MAX_TOKENS, stream=True,
            stream_options={"include_usage": True}) as raw:
        chunks = list(raw.parse())
        request_id = raw.headers["X-Request-Id"]

    seen = only_request(env.providers.recorder.since(mark), case.provider)
    assert (seen.path, seen.model, seen.stream, seen.max_tokens) == (
        CHAT_PATHS[case.provider], case.upstream_model, True, MAX_TOKENS)
    if case.provider != "anthropic":  # OpenAI-shaped streams report usage only when asked
        assert seen.include_usage, "LiteLLM did not ask the provider for the stream's usage"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER
    usage_chunks = [c.usage for c in chunks if c.usage is not None]
    assert usage_chunks, "the client asked for usage and got none"
    assert (usage_chunks[-1].prompt_tokens, usage_chunks[-1].completion_tokens) == (
        case.usage.prompt, case.usage.completion)
    row = await attribution(db, payer.user_id, request_id)
    assert_row(row, case.model, expected, case.usage)


# ---- images ----------------------------------------------------------------------------


def image_price(entry: catalogue.ModelEntry, quality: str, size: str) -> Decimal:
    """USD per image: the catalogue's price for this quality and size, or its one flat price."""
    by_option: dict[str, Decimal] = getattr(entry, "image_prices", None) or {}
    return by_option[f"{quality}/{size}"] if by_option else entry.output_cost_per_image


@pytest.mark.parametrize(("quality", "size"), [("standard", "1024x1024"), ("hd", "1792x1024")])
async def test_dall_e_3_is_billed_per_image_at_the_catalogue_price(env: Env, payer: Account, db: asyncpg.Connection,
                                                                   quality: Literal["standard", "hd"],
                                                                   size: Literal["1024x1024", "1792x1024"]) -> None:
    price = image_price(resolved(env, "dall-e-3"), quality, size)
    assert price > 0, "dall-e-3 resolves to a zero price per image"
    expected = to_millicredits(price * 1)  # dall-e-3 makes one image per request
    mark = env.providers.recorder.mark()
    raw = sdk(env.inference, payer.key).images.with_raw_response.generate(
        model="dall-e-3", prompt="A ledger that always balances.", n=1, quality=quality, size=size)
    images = raw.parse()

    seen = only_request(env.providers.recorder.since(mark), "openai")
    assert (seen.path, seen.model, seen.n) == ("/v1/images/generations", "dall-e-3", 1)
    assert (seen.body.get("quality"), seen.body.get("size")) == (quality, size)
    assert images.data is not None and len(images.data) == 1
    assert raw.headers["X-Cost-Incurred"] == credits_text(expected)
    row = await attribution(db, payer.user_id, raw.headers["X-Request-Id"])
    assert_row(row, "dall-e-3", expected)
    assert json.loads(row["request_metadata"]).get("images") == 1
