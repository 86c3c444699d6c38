"""The `inference_overhead` contender: what the inference service adds to a
chat call — HTTP, FastAPI, key check, estimate, Reserve, Commit — measured as
the latency of a demo-chat call through the service minus the same LiteLLM
call (`litellm.acompletion`, same params, mock_response) made directly in a
process of its own. Both sequential, one call at a time, after a warm-up."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from .loadgen import percentile

MODELS_FILE = Path(__file__).resolve().parent.parent / "inference_service" / "models.yaml"
MODEL = "demo-chat"
MESSAGES = [{"role": "user", "content": "Summarize in one line: credits are reserved before the call."}]
MAX_TOKENS = 64
UPSTREAM_TIMEOUT = 120.0  # what the service passes (INFERENCE_UPSTREAM_TIMEOUT_SECONDS default)


@dataclass
class Latencies:
    p50_ms: float
    p99_ms: float
    mean_ms: float
    calls: int

    @classmethod
    def of(cls, seconds: list[float]) -> Latencies:
        ordered = sorted(seconds)
        return cls(percentile(ordered, 0.5) * 1000, percentile(ordered, 0.99) * 1000,
                   sum(ordered) / len(ordered) * 1000, len(ordered))


def _direct_params() -> dict:
    catalogue = yaml.safe_load(MODELS_FILE.read_text())
    entry = next(m for m in catalogue["model_list"] if m["model_name"] == MODEL)
    return {**entry["litellm_params"], "messages": MESSAGES, "max_tokens": MAX_TOKENS, "timeout": UPSTREAM_TIMEOUT}


async def _direct(warmup: int, calls: int) -> list[float]:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # as inference_service does: no network
    import litellm

    litellm.suppress_debug_info = True
    logging.getLogger("LiteLLM").setLevel(logging.WARNING)
    params = _direct_params()
    for _ in range(warmup):
        await litellm.acompletion(**params)
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        await litellm.acompletion(**params)
        out.append(time.perf_counter() - t0)
    return out


def _direct_main(warmup: int, calls: int, conn) -> None:
    try:
        conn.send(("ok", asyncio.run(_direct(warmup, calls))))
    except BaseException:
        conn.send(("error", traceback.format_exc()))


def direct_latencies(warmup: int, calls: int) -> list[float]:
    """LiteLLM alone, in a fresh process (as the service runs it: one event loop, in-process)."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_direct_main, args=(warmup, calls, child), daemon=True)
    proc.start()
    try:
        if not parent.poll(300):
            raise RuntimeError("direct LiteLLM measurement timed out")
        kind, payload = parent.recv()
    finally:
        proc.join(timeout=10)
    if kind != "ok":
        raise RuntimeError(f"direct LiteLLM measurement failed:\n{payload}")
    return payload


def service_latencies(base_url: str, api_key: str, warmup: int, calls: int) -> list[float]:
    """The same call through the inference service (httpx, keep-alive, one at a time)."""
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    headers = {"Authorization": f"Bearer {api_key}"}
    out = []
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
        for i in range(warmup + calls):
            t0 = time.perf_counter()
            response = client.post("/chat/completions", json=body)
            elapsed = time.perf_counter() - t0
            if response.status_code != 200 or "X-Cost-Incurred" not in response.headers:
                raise RuntimeError(f"inference call failed: {response.status_code} {response.text[:500]}")
            if i >= warmup:
                out.append(elapsed)
    return out
