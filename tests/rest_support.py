"""Support for REST tests: a model catalogue pointing at the local upstream, the
inference service as a real process, API keys and SDK clients."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import yaml
from conftest import ROOT, AuthorityProcess, free_port
from upstream import Upstream

from credit.v1 import admin_pb2

CHAT_IN = "0.000001"  # USD per token, as priced in the test catalogue
CHAT_OUT = "0.000002"
IMAGE_PRICE = "0.04"
EMBED_IN = "0.0000123"  # USD per input token of its embedding models: over 1 millicredit, one token more shows
AUDIO_PER_SECOND = "0.000123"  # USD per second of audio of its transcription models
MODES = {"embedding": ("up-embed", "up-embed-fail", "up-embed-cut", "up-embed-delay", "up-embed-nousage"),
         "audio_transcription": ("up-transcribe", "up-transcribe-fail", "up-transcribe-delay", "up-transcribe-long"),
         "moderation": ("up-moderate", "up-moderate-fail", "up-moderate-delay")}


def write_catalogue(path: Path, upstream: Upstream) -> Path:
    def upstream_model(name: str, mode: str = "chat") -> dict:
        info = {"mode": mode, "max_output_tokens": 256}
        if mode == "chat":
            info.update(input_cost_per_token=float(CHAT_IN), output_cost_per_token=float(CHAT_OUT))
        elif mode == "image_generation":
            info.update(output_cost_per_image=float(IMAGE_PRICE))
        elif mode == "embedding":
            info.update(input_cost_per_token=float(EMBED_IN), max_input_tokens=8191)
        elif mode == "audio_transcription":
            info.update(input_cost_per_second=float(AUDIO_PER_SECOND))
        return {"model_name": name, "litellm_params": {"model": f"openai/{name}", "api_base": upstream.base_url,
                                                        "api_key": "upstream-test-key"}, "model_info": info}

    catalogue = yaml.safe_load((ROOT / "inference_service" / "models.yaml").read_text())
    catalogue["model_list"] = [m for m in catalogue["model_list"] if m["model_name"].startswith("demo-")]
    catalogue["model_list"] += [upstream_model(n) for n in ("up-chat", "up-fail", "up-slow", "up-delay",
                                                             "up-count", "up-tools")]
    catalogue["model_list"].append(upstream_model("up-image", "image_generation"))
    catalogue["model_list"] += [upstream_model(name, mode) for mode, names in MODES.items() for name in names]
    path.write_text(yaml.safe_dump(catalogue))
    return path


class InferenceProcess:
    """`python -m inference_service` as a child process."""

    def __init__(self, authority: AuthorityProcess, token: str, models_file: Path, extra_env: dict | None = None):
        self.authority = authority
        self.token = token
        self.models_file = models_file
        self.port = free_port()
        self.outbox = Path(tempfile.mkdtemp(prefix="outbox-")) / "outbox.sqlite3"
        self.extra_env = extra_env or {}
        self.log_path = Path(tempfile.mkstemp(prefix="inference-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/api/v1/llm"

    def start(self) -> InferenceProcess:
        env = {**os.environ, "CREDIT_AUTHORITY_ADDR": self.authority.addr, "CREDIT_SERVICE_TOKEN": self.token,
               "INFERENCE_HOST": "127.0.0.1", "INFERENCE_PORT": str(self.port),
               "INFERENCE_MODELS_FILE": str(self.models_file), "INFERENCE_KEY_CACHE_SECONDS": "0.5",
               "INFERENCE_OUTBOX_PATH": str(self.outbox), "INFERENCE_OUTBOX_REPLAY_SECONDS": "0.3",
               "INFERENCE_AUTHORITY_TIMEOUT_SECONDS": "2",
               # Every test talks from 127.0.0.1: only the brute-force test sets a low limit.
               "INFERENCE_AUTH_FAILURE_LIMIT": "10000", **self.extra_env}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "inference_service"], env=env, stdout=log, stderr=log,
                                     cwd=ROOT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"inference service exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"inference service did not start: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@dataclass
class Account:
    user_id: str
    org_id: str
    key: str
    key_id: str


def make_key(admin, user_id: str, org_id: str = "", service: bool = False) -> tuple[str, str]:
    created = admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(
        user_id=user_id, org_id=org_id, name="test",
        kind=admin_pb2.API_KEY_KIND_SERVICE if service else admin_pb2.API_KEY_KIND_USER))
    return created.secret, created.key.key_id


def sdk(inference: InferenceProcess, key: str, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=inference.base_url, api_key=key, max_retries=0, timeout=60, **kwargs)


def async_sdk(inference: InferenceProcess, key: str, **kwargs) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=inference.base_url, api_key=key, max_retries=0, timeout=60, **kwargs)
