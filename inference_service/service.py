"""What the REST routes share: settings, catalogue, pricing, the authority client and the meter,
who is calling (API key, organization header) and who pays for a request."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import timezone
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from credit_service import logs
from credit_service.ids import ID
from credit_service.money import format_credits

from . import catalogue, errors
from .access_tokens import TokenRefused, looks_like_jwt
from .authority_client import ApiKey, AuthorityClient, Tls
from .billing import Pricing
from .budget import budget_of
from .metering import Billing, Meter
from .outbox import CommitOutbox
from .schemas import ChatCompletionRequest, ImageGenerationRequest
from .settings import Settings
from .sso import Sso

TOKEN_SCOPE = "oidc_"
_CLIENT_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,100}")


@dataclass(frozen=True)
class Caller:
    key: ApiKey  # for an access token or a console session: key_id "", the user's id
    org_header: str
    signed_in_with: str = "api_key"  # api_key | access_token | session


class AuthFailures:
    """Failed key checks per client address in a sliding window: past the limit, a failure is answered 429.

    Only failures are counted and the key is checked first, so a valid key passes even from an address
    that is blocked (colleagues behind one NAT as a typing user). Memory is bounded: at most
    `max_addresses` addresses (least recently failing evicted first) with at most limit + 1 times each;
    each failure is O(1) work (amortized over the expired times it drops)."""

    def __init__(self, limit: int, window: float, max_addresses: int = 100_000):
        self._limit = max(limit, 1)
        self._window = window
        self._max_addresses = max(max_addresses, 1)
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def times_held(self) -> int:
        """How many failure times are in memory (all addresses): for tests, O(addresses)."""
        return sum(len(times) for times in self._seen.values())

    def record(self, client: str) -> int:
        """Counts one failure of `client`; returns seconds until it may fail again unblocked, 0 if not blocked."""
        now = time.monotonic()
        times = self._seen.get(client)
        if times is None:
            if len(self._seen) >= self._max_addresses:
                self._seen.popitem(last=False)
            times = self._seen[client] = deque(maxlen=self._limit + 1)
        else:
            self._seen.move_to_end(client)
        while times and times[0] <= now - self._window:
            times.popleft()
        times.append(now)
        if len(times) <= self._limit:
            return 0
        return max(int(times[-self._limit] + self._window - now) + 1, 1)


class InferenceService:
    """Holds what the routes share: settings, catalogue, pricing, the authority client."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.models = catalogue.load(settings.models_file)
        self.pricing = Pricing(settings.credits_per_usd, settings.markup, settings.max_output_tokens)
        self._client: AuthorityClient | None = None
        self._meter: Meter | None = None
        self._outbox_replay: asyncio.Task | None = None  # settlements are the meter's tasks
        self.failures = AuthFailures(settings.auth_failure_limit, settings.auth_failure_window_seconds)
        # transcription uploads read and held at once (routes/modes.py): past it, 429
        self.upload_slots = asyncio.Semaphore(max(settings.max_concurrent_uploads, 1))
        # sign-in through an identity provider (console) and its access tokens (REST): when configured
        self.sso = Sso(settings.sso, settings.key_cache_seconds) if settings.sso.enabled else None

    async def start(self) -> None:
        outbox = CommitOutbox(self.settings.outbox_path)
        tls = Tls(self.settings.authority_tls_ca_file, self.settings.authority_tls_cert_file,
                  self.settings.authority_tls_key_file)
        self._client = AuthorityClient(self.settings.authority_addr, self.settings.service_token,
                                      timeout=self.settings.authority_timeout_seconds,
                                      key_cache_seconds=self.settings.key_cache_seconds, outbox=outbox, tls=tls)
        self._meter = Meter(self._client, self.pricing, self.settings)
        self._outbox_replay = asyncio.get_running_loop().create_task(
            self._client.run_outbox(self.settings.outbox_replay_seconds), name="outbox-replay")

    @property
    def client(self) -> AuthorityClient:
        if self._client is None:
            raise RuntimeError("the service has not started")
        return self._client

    @property
    def meter(self) -> Meter:
        if self._meter is None:
            raise RuntimeError("the service has not started")
        return self._meter

    async def stop(self) -> None:
        if self._meter is not None:  # settlements in progress finish (or reach the outbox) first
            await self._meter.drain(timeout=10)
        if self._outbox_replay is not None:
            self._outbox_replay.cancel()
        if self._client:
            await self._client.close()
            self._client.outbox.close()

    def model(self, name: str, mode: str) -> catalogue.ModelEntry:
        """The catalogue entry; 404 when there is none, 400 naming the right endpoint when it is of another mode."""
        entry = self.models.get(name)
        if entry is None:
            raise errors.not_found(f"The model '{name}' does not exist or is not available here.",
                                   "model_not_found")
        if entry.mode != mode:
            article = "an" if entry.mode[0] in "aeiou" else "a"
            raise errors.bad_request(f"The model '{name}' is {article} {entry.mode} model: use POST /api/v1/llm"
                                     f"{catalogue.ENDPOINT_OF_MODE[entry.mode]}, not this endpoint.",
                                     "wrong_endpoint_for_model")
        return entry

    # ---- who pays --------------------------------------------------------

    async def authenticate(self, request: Request, *, session: bool = False) -> Caller:
        """The caller: an API key, or (SSO configured) the provider's JWT access token, or, for the
        console's routes (`session`), the signed-in session when no Authorization header is sent."""
        client = request.client.host if request.client else "unknown"
        header = request.headers.get("authorization", "")
        scheme, _, secret = header.partition(" ")
        secret = secret.strip()
        key, way = None, "api_key"
        if scheme.lower() == "bearer" and secret and self.sso is not None and looks_like_jwt(secret):
            key, way = await self._access_token(secret, client), "access_token"
        elif scheme.lower() == "bearer" and secret and len(secret) <= 256:
            key = await self.client.verify_key(secret)
        elif not header and session and self.sso is not None and (user_id := self.sso.session_user(request)):
            key, way = ApiKey("", user_id, "", False), "session"
        if key is None:
            raise self._refused(client, errors.unauthorized())
        org_header = request.headers.get("openai-organization", "").strip()
        if org_header and not ID.fullmatch(org_header):
            raise errors.bad_request("OpenAI-Organization must be an organization id", "invalid_organization")
        return Caller(key, org_header, way)

    async def _access_token(self, token: str, client: str) -> ApiKey:
        assert self.sso is not None
        try:
            return await self.sso.bearer(token, self.client)
        except TokenRefused as refused:
            refusal = errors.ApiError(401, str(refused), "authentication_error", "invalid_access_token",
                                      headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
            raise self._refused(client, refusal) from None

    def _refused(self, client: str, error: errors.ApiError) -> errors.ApiError:
        """A failed key check: counted; past the limit for this address the answer is 429 instead of `error`.
        Checked after the key, so a valid key is never refused here (it costs one verification, cached)."""
        retry_after = self.failures.record(client)
        if not retry_after:
            return error
        return errors.ApiError(429, "Too many failed authentication attempts from this address; slow down.",
                               "rate_limit_error", "too_many_auth_failures",
                               headers={"Retry-After": str(retry_after)})

    def billing(self, caller: Caller, request: Request, body_user: str | None) -> Billing:
        key = caller.key
        org = key.org_id
        if caller.org_header:
            if key.org_id and caller.org_header != key.org_id:
                raise errors.forbidden(f"This API key belongs to organization '{key.org_id}'; "
                                       f"it cannot spend in '{caller.org_header}'.")
            org = caller.org_header
        client_id = request.headers.get("idempotency-key") or request.headers.get("x-request-id")
        if client_id is not None and not _CLIENT_REQUEST_ID.fullmatch(client_id):
            raise errors.bad_request("Idempotency-Key / X-Request-Id must be 1-100 printable ASCII characters "
                                     "without spaces", "invalid_request_id")
        request_id = client_id or f"req_{uuid.uuid4().hex}"
        request.state.request_id = request_id
        logs.request_id.set(request_id)  # sent to the authority as gRPC metadata, logged by both
        user_id = key.user_id
        if key.is_service and body_user:
            # An org service key may act for members of its own organization; the
            # authority refuses (403) anyone who is not a member of that org.
            if not ID.fullmatch(body_user):
                raise errors.bad_request("'user' must be a user id when sent with a service key", "invalid_user")
            user_id, org = body_user, key.org_id
        # Reserve ids are scoped to the key, or to the user for an access token (no key; hashed: ≤ 128 chars)
        scope = key.key_id or token_scope(key.user_id)
        return Billing(user_id, org, body_user, request_id, f"{scope}:{request_id}", key.key_id,
                       budget_of(request.headers))

    async def chat(self, caller: Caller, body: ChatCompletionRequest,
                   request: Request) -> JSONResponse | StreamingResponse:
        entry = self.model(body.model, "chat")
        return await self.meter.chat(entry, body, self.billing(caller, request, body.user))

    async def images(self, caller: Caller, body: ImageGenerationRequest, request: Request) -> JSONResponse:
        entry = self.model(body.model, "image_generation")
        return await self.meter.images(entry, body, self.billing(caller, request, body.user))


def token_scope(user_id: str) -> str:
    """What scopes the Reserve ids of a caller with an access token: oidc_ and 16 hex digits of the user."""
    return f"{TOKEN_SCOPE}{hashlib.sha256(user_id.encode()).hexdigest()[:16]}"


def client_request_id(reserve_id: str) -> str:
    """The id the client saw: Reserve request ids are "<key id or token scope>:<client id>"."""
    key_id, sep, client_id = reserve_id.partition(":")
    return client_id if sep and key_id.startswith(("ck_", TOKEN_SCOPE)) else reserve_id


def credits_fields(prefix: str, millicredits: int) -> dict[str, Any]:
    """A credits amount as REST shows it: the decimal string and the integer millicredits."""
    return {prefix: format_credits(millicredits), f"{prefix}_millicredits": millicredits}


def iso_time(value: Any) -> str | None:
    """A google.protobuf.Timestamp as ISO 8601 in UTC; None when unset (an empty message)."""
    return value.ToDatetime(timezone.utc).isoformat() if value is not None and value.ByteSize() else None
