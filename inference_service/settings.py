"""Every setting of the inference service, read from the environment once at start."""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 8084
    authority_addr: str = "127.0.0.1:50051"
    service_token: str = ""
    models_file: Path = PACKAGE_DIR / "models.yaml"
    credits_per_usd: Decimal = Decimal(100)  # 1 credit = 1 US cent of provider cost
    markup: Decimal = Decimal(0)  # 0.2 = +20 %
    max_output_tokens: int = 4096  # cap on the worst-case estimate when max_tokens is absent
    key_cache_seconds: float = 5.0
    reserve_ttl_seconds: int = 600
    authority_timeout_seconds: float = 5.0
    upstream_timeout_seconds: float = 120.0
    outbox_path: Path = PROJECT_ROOT / ".data" / "commit_outbox.sqlite3"
    outbox_replay_seconds: float = 2.0
    max_body_bytes: int = 1024 * 1024
    authority_tls_ca_file: str = ""  # CA of the authority's certificate: TLS when set
    authority_tls_cert_file: str = ""  # our client certificate, for mutual TLS
    authority_tls_key_file: str = ""
    auth_failure_limit: int = 20  # failed key checks per client address per window …
    auth_failure_window_seconds: float = 60.0  # … before that address gets 429

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)

        def get(name: str, default: str) -> str:
            return env.get(name, "").strip() or default

        data_dir = Path(get("CREDIT_DATA_DIR", str(PROJECT_ROOT / ".data")))
        return cls(
            host=get("INFERENCE_HOST", "0.0.0.0"),
            port=int(get("INFERENCE_PORT", "8084")),
            authority_addr=get("CREDIT_AUTHORITY_ADDR", "127.0.0.1:50051"),
            service_token=env.get("CREDIT_SERVICE_TOKEN", ""),
            models_file=Path(get("INFERENCE_MODELS_FILE", str(PACKAGE_DIR / "models.yaml"))),
            credits_per_usd=Decimal(get("INFERENCE_CREDITS_PER_USD", "100")),
            markup=Decimal(get("INFERENCE_MARKUP", "0")),
            max_output_tokens=int(get("INFERENCE_MAX_OUTPUT_TOKENS", "4096")),
            key_cache_seconds=float(get("INFERENCE_KEY_CACHE_SECONDS", "5")),
            reserve_ttl_seconds=int(get("INFERENCE_RESERVE_TTL_SECONDS", "600")),
            authority_timeout_seconds=float(get("INFERENCE_AUTHORITY_TIMEOUT_SECONDS", "5")),
            upstream_timeout_seconds=float(get("INFERENCE_UPSTREAM_TIMEOUT_SECONDS", "120")),
            outbox_path=Path(get("INFERENCE_OUTBOX_PATH", str(data_dir / "commit_outbox.sqlite3"))),
            outbox_replay_seconds=float(get("INFERENCE_OUTBOX_REPLAY_SECONDS", "2")),
            max_body_bytes=int(get("INFERENCE_MAX_BODY_BYTES", str(1024 * 1024))),
            authority_tls_ca_file=env.get("CREDIT_AUTHORITY_TLS_CA_FILE", ""),
            authority_tls_cert_file=env.get("CREDIT_AUTHORITY_TLS_CERT_FILE", ""),
            authority_tls_key_file=env.get("CREDIT_AUTHORITY_TLS_KEY_FILE", ""),
            auth_failure_limit=int(get("INFERENCE_AUTH_FAILURE_LIMIT", "20")),
            auth_failure_window_seconds=float(get("INFERENCE_AUTH_FAILURE_WINDOW_SECONDS", "60")),
        )
