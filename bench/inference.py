"""The `inference_overhead` contender: what the inference service adds to a
chat call — HTTP, FastAPI, key check, estimate, Reserve, Commit — measured as
the latency of a demo-chat call through the service minus the same LiteLLM
call (`litellm.acompletion`, same params, mock_response) made directly in a
process of its own. Both sequential, one call at a time, after a warm-up."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import multiprocessing
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

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
    """The same call through the inference service: one keep-alive HTTP/1.1 connection
    (the standard library's http.client: measured against a bare ASGI app it costs
    0.15 ms a call at p50 where httpx costs 0.40 ms, client time that is not the
    service's), one call at a time."""
    url = urlsplit(base_url)
    body = json.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS})
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    out = []
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        for i in range(warmup + calls):
            t0 = time.perf_counter()
            conn.request("POST", f"{url.path}/chat/completions", body=body, headers=headers)
            response = conn.getresponse()
            text = response.read()
            elapsed = time.perf_counter() - t0
            if response.status != 200 or response.getheader("X-Cost-Incurred") is None:
                raise RuntimeError(f"inference call failed: {response.status} {text[:500]!r}")
            if i >= warmup:
                out.append(elapsed)
    finally:
        conn.close()
    return out
