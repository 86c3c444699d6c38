"""The model catalogue: which models clients may call, how LiteLLM reaches
them, and what they cost (USD per token / per image / per second of audio, as Decimal)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("inference_service")

_ENV_PREFIX = "os.environ/"
DEFAULT_IMAGE_QUALITY = "standard"  # what image providers use when a request names none
DEFAULT_IMAGE_SIZE = "1024x1024"
# An image part's worst case in input tokens: Anthropic bills ~1,600 for its largest
# images; OpenAI's gpt-4o at most 85 + 8 × 170 = 1,445 ("high" detail, 8 tiles).
DEFAULT_MAX_TOKENS_PER_IMAGE = 1600
# What an entry may be used for (model_info.mode), and the endpoint under /api/v1/llm that serves each mode.
ENDPOINT_OF_MODE = {"chat": "/chat/completions", "image_generation": "/images/generations",
                    "embedding": "/embeddings", "audio_transcription": "/audio/transcriptions",
                    "moderation": "/moderations"}
DEFAULT_MAX_INPUT_TOKENS = 8191  # an embedding or moderation input's cap when the catalogue names none


@dataclass(frozen=True)
class ModelEntry:
    name: str
    mode: str  # a key of ENDPOINT_OF_MODE
    litellm_params: dict[str, Any]
    input_cost_per_token: Decimal
    output_cost_per_token: Decimal
    output_cost_per_image: Decimal
    max_output_tokens: int
    price_override: bool
    provider: str = field(default="")
    # Per-image prices by "quality/size" (model_info.image_prices); empty: one flat price for any.
    image_prices: dict[str, Decimal] = field(default_factory=dict)
    # Input tokens one image part may cost at most (model_info.max_tokens_per_image).
    max_tokens_per_image: int = DEFAULT_MAX_TOKENS_PER_IMAGE
    # USD per second of audio (audio_transcription: model_info.input_cost_per_second, LiteLLM's name).
    input_cost_per_second: Decimal = Decimal(0)
    # Input tokens one embedding input (or a whole moderation request) may have (model_info.max_input_tokens).
    max_input_tokens: int = DEFAULT_MAX_INPUT_TOKENS

    @property
    def litellm_model(self) -> str:
        return self.litellm_params["model"]

    @property
    def is_mock(self) -> bool:
        return "mock_response" in self.litellm_params

    def image_price(self, quality: str | None, size: str | None) -> Decimal:
        """USD per image at this quality and size; ValueError when the catalogue does not offer them."""
        if not self.image_prices:
            return self.output_cost_per_image
        key = f"{quality or DEFAULT_IMAGE_QUALITY}/{size or DEFAULT_IMAGE_SIZE}"
        if key not in self.image_prices:
            raise ValueError(f"{self.name} offers quality/size {', '.join(sorted(self.image_prices))}, "
                             f"not {key}")
        return self.image_prices[key]


def _resolve_env(params: dict[str, Any], env: dict[str, str]) -> dict[str, Any] | None:
    """Replaces os.environ/NAME values; None when a variable is unset (entry off)."""
    resolved = {}
    for key, value in params.items():
        if isinstance(value, str) and value.startswith(_ENV_PREFIX):
            value = env.get(value[len(_ENV_PREFIX):], "")
            if not value:
                return None
        resolved[key] = value
    return resolved


def _decimal(value: Any) -> Decimal:
    return Decimal(str(value)) if value is not None else Decimal(0)


def _litellm_prices(model: str) -> dict[str, Any]:
    import litellm

    try:
        return dict(litellm.get_model_info(model))
    except Exception:  # unknown to LiteLLM's cost map
        return {}


def load(path: Path, env: dict[str, str] | None = None) -> dict[str, ModelEntry]:
    env = dict(os.environ if env is None else env)
    config = yaml.safe_load(path.read_text()) or {}
    entries: dict[str, ModelEntry] = {}
    for item in config.get("model_list", []):
        name = item["model_name"]
        params = _resolve_env(dict(item["litellm_params"]), env)
        if params is None:
            log.info("model %s is off: its provider key is not set", name)
            continue
        info = dict(item.get("model_info") or {})
        override = any(k in info for k in ("input_cost_per_token", "output_cost_per_token", "output_cost_per_image",
                                           "input_cost_per_second"))
        known = {} if override else _litellm_prices(params["model"])
        merged = {**known, **info}
        mode = merged.get("mode") or "chat"
        if mode not in ENDPOINT_OF_MODE:
            log.warning("model %s is off: mode %s is not served here (%s)", name, mode, ", ".join(ENDPOINT_OF_MODE))
            continue
        if mode == "embedding" and not merged.get("input_cost_per_token"):
            log.warning("model %s is off: no per-token price known (add model_info.input_cost_per_token)", name)
            continue
        if mode == "audio_transcription" and not merged.get("input_cost_per_second"):
            log.warning("model %s is off: no per-second price known (add model_info.input_cost_per_second)", name)
            continue
        if mode == "chat" and not (merged.get("input_cost_per_token") or merged.get("output_cost_per_token")):
            log.warning("model %s is off: no price known (add model_info prices)", name)
            continue
        if mode == "image_generation" and not (merged.get("output_cost_per_image") or info.get("image_prices")):
            log.warning("model %s is off: no per-image price (add model_info.output_cost_per_image)", name)
            continue
        entries[name] = ModelEntry(
            name=name, mode=mode, litellm_params=params,
            input_cost_per_token=_decimal(merged.get("input_cost_per_token")),
            output_cost_per_token=_decimal(merged.get("output_cost_per_token")),
            output_cost_per_image=_decimal(merged.get("output_cost_per_image")),
            max_output_tokens=int(merged.get("max_output_tokens") or merged.get("max_tokens") or 4096),
            price_override=override, provider=params["model"].split("/", 1)[0],
            image_prices={str(k): _decimal(v) for k, v in (info.get("image_prices") or {}).items()},
            max_tokens_per_image=int(info.get("max_tokens_per_image") or DEFAULT_MAX_TOKENS_PER_IMAGE),
            input_cost_per_second=_decimal(merged.get("input_cost_per_second")),
            max_input_tokens=int(merged.get("max_input_tokens") or DEFAULT_MAX_INPUT_TOKENS))
    return entries
