"""Every setting of the inference service, read from the environment once at start.

Declared with credit_service/settings.py's helpers: each field names its
variable, its default is written once (in the field), and only that module
reads the environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from credit_service.settings import DATA_DIR, LOCAL_AUTHORITY_ADDR, FromEnvironment, group, setting

PACKAGE_DIR = Path(__file__).resolve().parent
OUTBOX_FILE = "commit_outbox.sqlite3"  # under data_dir unless INFERENCE_OUTBOX_PATH names another file


@dataclass(frozen=True)
class SsoSettings(FromEnvironment):
    """Sign-in through an OpenID Connect provider (README, "Signing in"): on when OIDC_ISSUER is set."""

    issuer: str = setting("OIDC_ISSUER", "")  # its discovery document is <issuer>/.well-known/openid-configuration
    client_id: str = setting("OIDC_CLIENT_ID", "")
    client_secret: str = setting("OIDC_CLIENT_SECRET", "")
    provider_name: str = setting("OIDC_PROVIDER_NAME", "")  # "Sign in with <name>"; empty: the issuer's host
    scopes: str = setting("OIDC_SCOPES", "openid profile email")
    # the claim whose value is the authority's user id (sub: stable, never reassigned)
    user_claim: str = setting("OIDC_USER_CLAIM", "sub")
    auto_create_users: bool = setting("OIDC_AUTO_CREATE_USERS", False)  # create unknown users on first sign-in
    # where the browser reaches this service: the redirect URI is <base>/auth/oidc/callback; empty: the request's
    redirect_base: str = setting("OIDC_REDIRECT_BASE", "")
    audience: str = setting("OIDC_AUDIENCE", "")  # `aud` of access tokens the REST API accepts; empty: the client id
    jwks_cache_seconds: float = setting("OIDC_JWKS_CACHE_SECONDS", 300.0)
    leeway_seconds: int = setting("OIDC_LEEWAY_SECONDS", 30)  # clock skew allowed on exp / nbf / iat
    # the console's session cookie: signed with this secret (required with SSO; every replica the same)
    session_secret: str = setting("CONSOLE_SESSION_SECRET", "")
    session_seconds: int = setting("CONSOLE_SESSION_SECONDS", 8 * 3600)
    session_https_only: bool = setting("CONSOLE_SESSION_HTTPS_ONLY", False)  # Secure cookie: set it behind HTTPS

    @property
    def enabled(self) -> bool:
        return bool(self.issuer)


@dataclass(frozen=True)
class Settings(FromEnvironment):
    host: str = setting("INFERENCE_HOST", "0.0.0.0")
    port: int = setting("INFERENCE_PORT", 8084)
    authority_addr: str = setting("CREDIT_AUTHORITY_ADDR", LOCAL_AUTHORITY_ADDR)
    service_token: str = setting("CREDIT_SERVICE_TOKEN", "")
    models_file: Path = setting("INFERENCE_MODELS_FILE", PACKAGE_DIR / "models.yaml")
    # 1 credit = 1 US cent of provider cost
    credits_per_usd: Decimal = setting("INFERENCE_CREDITS_PER_USD", Decimal(100))
    markup: Decimal = setting("INFERENCE_MARKUP", Decimal(0))  # 0.2 = +20 %
    # cap on the worst-case estimate when max_tokens is absent
    max_output_tokens: int = setting("INFERENCE_MAX_OUTPUT_TOKENS", 4096)
    key_cache_seconds: float = setting("INFERENCE_KEY_CACHE_SECONDS", 5.0)
    reserve_ttl_seconds: int = setting("INFERENCE_RESERVE_TTL_SECONDS", 600)
    authority_timeout_seconds: float = setting("INFERENCE_AUTHORITY_TIMEOUT_SECONDS", 5.0)
    upstream_timeout_seconds: float = setting("INFERENCE_UPSTREAM_TIMEOUT_SECONDS", 120.0)
    data_dir: Path = setting("CREDIT_DATA_DIR", DATA_DIR)
    outbox_file: Path | None = setting("INFERENCE_OUTBOX_PATH", None, Path)  # None: data_dir / OUTBOX_FILE
    outbox_replay_seconds: float = setting("INFERENCE_OUTBOX_REPLAY_SECONDS", 2.0)
    max_body_bytes: int = setting("INFERENCE_MAX_BODY_BYTES", 1024 * 1024)
    # POST /audio/transcriptions: the largest audio file accepted (OpenAI's limit: 25 MB)
    max_upload_bytes: int = setting("INFERENCE_MAX_UPLOAD_BYTES", 25 * 1024 * 1024)
    # POST /audio/transcriptions: uploads in this process at once (read and held until the call ends); past it 429
    max_concurrent_uploads: int = setting("INFERENCE_MAX_CONCURRENT_UPLOADS", 8)
    # POST /embeddings: the most input tokens one request may have, all inputs together (OpenAI's: 300,000)
    embedding_max_tokens: int = setting("INFERENCE_EMBEDDING_MAX_TOKENS", 300_000)
    # CA of the authority's certificate: TLS when set
    authority_tls_ca_file: str = setting("CREDIT_AUTHORITY_TLS_CA_FILE", "")
    # our client certificate, for mutual TLS
    authority_tls_cert_file: str = setting("CREDIT_AUTHORITY_TLS_CERT_FILE", "")
    authority_tls_key_file: str = setting("CREDIT_AUTHORITY_TLS_KEY_FILE", "")
    # failed key checks per client address per window …
    auth_failure_limit: int = setting("INFERENCE_AUTH_FAILURE_LIMIT", 20)
    # … before that address gets 429
    auth_failure_window_seconds: float = setting("INFERENCE_AUTH_FAILURE_WINDOW_SECONDS", 60.0)
    # /metrics answers only clients on loopback (404 to others) unless true: for a scraper on another host
    metrics_remote: bool = setting("INFERENCE_METRICS_REMOTE", False)
    # Buying credits with Stripe Checkout (docs/payments.md): on only when both secrets are set. The
    # webhook secret only says payments are on here: the authority verifies every event with its own.
    stripe_secret_key: str = setting("STRIPE_SECRET_KEY", "")
    stripe_webhook_secret: str = setting("STRIPE_WEBHOOK_SECRET", "")
    stripe_api_base: str = setting("STRIPE_API_BASE", "https://api.stripe.com")  # tests: a local stand-in
    # the price, as the authority reads it: credits per major unit (100 = 1 credit per cent)
    payment_currency: str = setting("PAYMENT_CURRENCY", "usd")
    payment_credits_per_unit: Decimal = setting("PAYMENT_CREDITS_PER_UNIT", Decimal(100))
    payment_minor_units_per_unit: int = setting("PAYMENT_MINOR_UNITS_PER_UNIT", 100)  # 100 for usd/eur; 1 for jpy
    payment_packs: str = setting("PAYMENT_PACKS", "1000,5000,20000")  # credits, comma-separated
    payment_min_credits: Decimal = setting("PAYMENT_MIN_CREDITS", Decimal(500))
    payment_max_credits: Decimal = setting("PAYMENT_MAX_CREDITS", Decimal(100000))
    # the console's address as the buyer's browser sees it (Stripe sends them back there); empty: the request's
    console_public_url: str = setting("CONSOLE_PUBLIC_URL", "")
    # user ids whose console shows the audit log of every organization (comma-separated; README, "Security")
    console_operators: str = setting("CONSOLE_OPERATORS", "")

    @property
    def operators(self) -> frozenset[str]:
        return frozenset(u.strip() for u in self.console_operators.split(",") if u.strip())
    sso: SsoSettings = group(SsoSettings)

    @property
    def outbox_path(self) -> Path:
        """The durable commit outbox (SQLite)."""
        return self.outbox_file or self.data_dir / OUTBOX_FILE
