"""Inference service: OpenAI-compatible REST that bills every LiteLLM call through the credit authority."""

import os

# LiteLLM fetches its price map from the network at import unless told to use
# the copy it ships; this service must start offline.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
