"""Every setting of the credit authority, read from the environment once at start.

The README's configuration table documents each variable; nothing deeper in
the code reads the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    return int(raw) if raw.strip() else default


def _float(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name, "")
    return float(raw) if raw.strip() else default


@dataclass(frozen=True)
class Settings:
    """Configuration of one authority process."""

    database_url: str = ""  # empty: embedded PostgreSQL under data_dir
    data_dir: Path = PROJECT_ROOT / ".data"
    embedded_pg_port: int = 54329
    listen_addr: str = "0.0.0.0:50051"
    db_pool_min: int = 2
    db_pool_max: int = 10
    default_ttl_seconds: int = 600
    max_ttl_seconds: int = 3600
    batch_max: int = 256  # operations per hot-path transaction; 1 turns batching off
    batch_in_flight: int = 1  # hot-path batches in the database at once, per process
    sweep_interval_seconds: float = 1.0
    sweep_batch: int = 1000
    auth_tokens: str = ""  # "name:token:role+role,…"
    auth_tokens_file: str = ""  # same format, one entry a line
    migrate_on_start: bool = True
    metrics_port: int = 9464  # Prometheus endpoint; 0 = off
    access_log: bool = True  # one JSON line per RPC (method, code, ms, request id)
    reuse_port: bool = False  # several authority processes may share one port (kernel balances connections)
    tls_cert_file: str = ""  # server certificate (PEM): TLS on when set
    tls_key_file: str = ""
    tls_client_ca_file: str = ""  # CA of client certificates: mutual TLS when set
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        data_dir = Path(env.get("CREDIT_DATA_DIR", "") or PROJECT_ROOT / ".data")
        return cls(
            database_url=env.get("DATABASE_URL", ""),
            data_dir=data_dir,
            embedded_pg_port=_int(env, "CREDIT_EMBEDDED_PG_PORT", 54329),
            listen_addr=env.get("CREDIT_LISTEN_ADDR", "") or "0.0.0.0:50051",
            db_pool_min=_int(env, "CREDIT_DB_POOL_MIN", 2),
            db_pool_max=_int(env, "CREDIT_DB_POOL_MAX", 10),
            default_ttl_seconds=_int(env, "CREDIT_DEFAULT_TTL_SECONDS", 600),
            max_ttl_seconds=_int(env, "CREDIT_MAX_TTL_SECONDS", 3600),
            batch_max=_int(env, "CREDIT_BATCH_MAX", 256),
            batch_in_flight=_int(env, "CREDIT_BATCH_IN_FLIGHT", 1),
            sweep_interval_seconds=_float(env, "CREDIT_SWEEP_INTERVAL_SECONDS", 1.0),
            sweep_batch=_int(env, "CREDIT_SWEEP_BATCH", 1000),
            auth_tokens=env.get("CREDIT_AUTH_TOKENS", ""),
            auth_tokens_file=env.get("CREDIT_AUTH_TOKENS_FILE", ""),
            migrate_on_start=env.get("CREDIT_MIGRATE_ON_START", "1") not in ("0", "false", "no"),
            reuse_port=env.get("CREDIT_REUSE_PORT", "0") in ("1", "true", "yes"),
            metrics_port=_int(env, "CREDIT_METRICS_PORT", 9464),
            access_log=env.get("CREDIT_ACCESS_LOG", "1") not in ("0", "false", "no"),
            tls_cert_file=env.get("CREDIT_TLS_CERT_FILE", ""),
            tls_key_file=env.get("CREDIT_TLS_KEY_FILE", ""),
            tls_client_ca_file=env.get("CREDIT_TLS_CLIENT_CA_FILE", ""),
        )
