"""Every setting, read from the environment once at start.

This module is the only reader of the environment in the product
(tests/test_self_contained.py checks it); inference_service/settings.py
declares the REST service's settings with the same helpers. A setting is a
dataclass field declared with `setting(VARIABLE, default)`: its default is
written there and nowhere else, and `from_env()` reads every variable of the
class. A variable that is unset or blank means the default; a value is taken
without surrounding whitespace and converted to the default's type. A yes/no
setting changes only on an explicit opposite: `0`, `false` or `no` turn off
one that defaults to on, `1`, `true` or `yes` turn on one that defaults to off.

The README's configuration table documents each variable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from decimal import Decimal
from pathlib import Path
from typing import Any, Self

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT_ROOT / ".data"  # CREDIT_DATA_DIR's default, for every process of the checkout
LOCAL_AUTHORITY_ADDR = "127.0.0.1:50051"  # where clients on this machine find the authority by default

_OFF = ("0", "false", "no")
_ON = ("1", "true", "yes")


def setting(variable: str, default: Any, parse: Callable[[str], Any] | None = None) -> Any:
    """A field read from environment variable `variable`; `parse` converts a value when the
    default's type cannot (the default is None)."""
    return field(default=default, metadata={"env": variable, "parse": parse})


def group(settings_class: type) -> Any:
    """A field holding a nested settings class, read from the same environment."""
    return field(default_factory=settings_class, metadata={"group": settings_class})


def _convert(declared: Any, raw: str) -> Any:
    parse = declared.metadata["parse"]
    if parse is not None:
        return parse(raw)
    default = declared.default
    if isinstance(default, bool):
        return raw not in _OFF if default else raw in _ON
    return type(default)(raw)


def read_environment(settings_class: type, env: Mapping[str, str] | None = None) -> Any:
    """An instance of `settings_class` from `env` (default: this process's environment)."""
    source: Mapping[str, str] = os.environ if env is None else env
    values: dict[str, Any] = {}
    for declared in fields(settings_class):
        if "group" in declared.metadata:
            values[declared.name] = read_environment(declared.metadata["group"], source)
        elif "env" in declared.metadata:
            raw = source.get(declared.metadata["env"], "").strip()
            if raw:
                values[declared.name] = _convert(declared, raw)
        elif declared.default is MISSING and declared.default_factory is MISSING:
            raise TypeError(f"{settings_class.__name__}.{declared.name} has no variable and no default")
    return settings_class(**values)


def child_environment(**overrides: str) -> dict[str, str]:
    """The environment for a child process: this process's, with `overrides`."""
    return {**os.environ, **overrides}


class FromEnvironment:
    """Gives a settings dataclass `from_env()`."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        result: Self = read_environment(cls, env)
        return result


@dataclass(frozen=True)
class AlertSettings(FromEnvironment):
    """Delivery of low-balance alerts (credit_service/jobs/alert_delivery.py)."""

    enabled: bool = setting("CREDIT_ALERTS_ENABLED", True)
    retry_base_seconds: float = setting("CREDIT_ALERT_RETRY_BASE_SECONDS", 1.0)
    retry_max_seconds: float = setting("CREDIT_ALERT_RETRY_MAX_SECONDS", 300.0)
    max_attempts: int = setting("CREDIT_ALERT_MAX_ATTEMPTS", 8)
    timeout_seconds: float = setting("CREDIT_ALERT_TIMEOUT_SECONDS", 5.0)  # total deadline of one attempt
    max_concurrent_per_org: int = setting("CREDIT_ALERT_MAX_CONCURRENT_PER_ORG", 2)
    max_in_flight: int = setting("CREDIT_ALERT_MAX_IN_FLIGHT", 32)  # deliveries under way in one process, all orgs
    # hosts a webhook may reach over plain http, trusted whatever they resolve to (comma-separated)
    webhook_http_hosts: str = setting("CREDIT_WEBHOOK_HTTP_HOSTS", "")
    poll_seconds: float = setting("CREDIT_ALERT_POLL_SECONDS", 5.0)  # safety net: look even without a notification
    lease_seconds: float = 60.0  # an alert being sent is skipped by other replicas this long (not configurable)


@dataclass(frozen=True)
class PaymentSettings(FromEnvironment):
    """Credits bought through Stripe Checkout (credit_service/payments.py). The authority verifies every
    webhook event itself with the endpoint's secret and prices the credits itself."""

    webhook_secret: str = setting("STRIPE_WEBHOOK_SECRET", "")  # empty: ApplyPaymentEvent is refused
    currency: str = setting("PAYMENT_CURRENCY", "usd")  # the one currency sold in (Stripe's lower case)
    # credits per major unit of the currency (Decimal: "100" = 1 credit a cent)
    credits_per_unit: Decimal = setting("PAYMENT_CREDITS_PER_UNIT", Decimal("100"))
    minor_units_per_unit: int = setting("PAYMENT_MINOR_UNITS_PER_UNIT", 100)  # 100 for usd/eur; 1 for jpy
    # a signature older than this is refused (Stripe's default tolerance)
    tolerance_seconds: int = setting("STRIPE_WEBHOOK_TOLERANCE_SECONDS", 300)


@dataclass(frozen=True)
class Settings(FromEnvironment):
    """Configuration of one authority process (`python -m credit_service serve | migrate | up`)."""

    database_url: str = setting("DATABASE_URL", "")  # empty: embedded PostgreSQL under data_dir
    data_dir: Path = setting("CREDIT_DATA_DIR", DATA_DIR)
    # Fernet keys for secrets at rest, comma-separated: the first encrypts, all decrypt (credit_service/secret_box.py);
    # empty: a key generated once into data_dir/secrets.key (mode 0600)
    secrets_keys: str = setting("CREDIT_SECRETS_KEYS", "")
    embedded_pg_port: int = setting("CREDIT_EMBEDDED_PG_PORT", 54329)
    # `up` (make run) leaves the embedded PostgreSQL it started running when it stops (make stop stops it)
    keep_embedded_pg: bool = setting("CREDIT_EMBEDDED_PG_KEEP", False)
    listen_addr: str = setting("CREDIT_LISTEN_ADDR", "0.0.0.0:50051")
    db_pool_min: int = setting("CREDIT_DB_POOL_MIN", 2)
    db_pool_max: int = setting("CREDIT_DB_POOL_MAX", 10)
    # slow reads (analytics, statements, forecasts, lists): their own pool, on this server when set (a replica)
    database_read_url: str = setting("DATABASE_READ_URL", "")  # empty: the same database as DATABASE_URL
    read_pool_max: int = setting("CREDIT_READ_POOL_MAX", 4)
    read_statement_timeout_seconds: float = setting("CREDIT_READ_STATEMENT_TIMEOUT_SECONDS", 10.0)  # 0: none
    read_lag_interval_seconds: float = setting("CREDIT_READ_LAG_INTERVAL_SECONDS", 5.0)  # replica lag sampling
    default_ttl_seconds: int = setting("CREDIT_DEFAULT_TTL_SECONDS", 600)
    max_ttl_seconds: int = setting("CREDIT_MAX_TTL_SECONDS", 3600)
    # operations per hot-path transaction; 1 turns batching off
    batch_max: int = setting("CREDIT_BATCH_MAX", 256)
    # hot-path batches in the database at once, per process
    batch_in_flight: int = setting("CREDIT_BATCH_IN_FLIGHT", 1)
    sweep_interval_seconds: float = setting("CREDIT_SWEEP_INTERVAL_SECONDS", 1.0)
    sweep_batch: int = setting("CREDIT_SWEEP_BATCH", 1000)
    auth_tokens: str = setting("CREDIT_AUTH_TOKENS", "")  # "name:token:role+role,…"
    auth_tokens_file: str = setting("CREDIT_AUTH_TOKENS_FILE", "")  # same format, one entry a line
    migrate_on_start: bool = setting("CREDIT_MIGRATE_ON_START", True)
    metrics_port: int = setting("CREDIT_METRICS_PORT", 9464)  # Prometheus endpoint; 0 = off
    # the Prometheus endpoint's address: loopback unless an operator opens it (0.0.0.0 = all interfaces)
    metrics_host: str = setting("CREDIT_METRICS_HOST", "127.0.0.1")
    # one JSON line per RPC (method, code, ms, request id)
    access_log: bool = setting("CREDIT_ACCESS_LOG", True)
    # several authority processes may share one port (kernel balances connections)
    reuse_port: bool = setting("CREDIT_REUSE_PORT", False)
    tls_cert_file: str = setting("CREDIT_TLS_CERT_FILE", "")  # server certificate (PEM): TLS on when set
    tls_key_file: str = setting("CREDIT_TLS_KEY_FILE", "")
    # CA of client certificates: mutual TLS when set
    tls_client_ca_file: str = setting("CREDIT_TLS_CLIENT_CA_FILE", "")
    # `up` (make run) starts the inference service next to the authority
    start_inference: bool = setting("INFERENCE_ENABLED", True)
    # platform credentials: how long an authority process trusts a lookup (a revocation reaches it within this)
    platform_cache_seconds: float = setting("CREDIT_PLATFORM_CACHE_SECONDS", 2.0)
    # lookups per second of platform secrets never seen valid (a flood of made-up ones costs no more queries)
    platform_unknown_lookups_per_second: float = setting("CREDIT_PLATFORM_UNKNOWN_LOOKUPS_PER_SECOND", 50.0)
    # how long a rotated-out platform secret stays valid, unless the rotation asks otherwise
    platform_grace_seconds: int = setting("CREDIT_PLATFORM_GRACE_SECONDS", 3600)
    alerts: AlertSettings = group(AlertSettings)
    payments: PaymentSettings = group(PaymentSettings)


@dataclass(frozen=True)
class OutputSettings(FromEnvironment):
    """What a person sees on a terminal (credit_service/logs.py, `up`'s progress), for every process."""

    # auto: one readable line per event on a terminal, one JSON object per line otherwise; text or json: always
    log_format: str = setting("LOG_FORMAT", "auto")
    quiet: bool = setting("CREDIT_QUIET", False)  # no start-up progress lines (make run)


@dataclass(frozen=True)
class AdminCliSettings(FromEnvironment):
    """What `creditctl` reads; an empty address or token falls back to the demo environment
    that `make run` wrote under data_dir, then (the address) to LOCAL_AUTHORITY_ADDR."""

    data_dir: Path = setting("CREDIT_DATA_DIR", DATA_DIR)
    authority_addr: str = setting("CREDIT_AUTHORITY_ADDR", "")
    admin_token: str = setting("CREDIT_ADMIN_TOKEN", "")
