"""Console sign-in through an OpenID Connect provider, and who a provider's token names (README,
"Signing in").

* The console's sign-in is the authorization-code flow with PKCE (S256), a nonce and a state, run by
  Authlib's Starlette client from the provider's discovery document (<issuer>/.well-known/
  openid-configuration). The state, the code verifier and the nonce wait in the signed session
  cookie between the redirect and the callback; Authlib checks the ID token (signature against the
  JWKS, issuer, audience, nonce, expiry).
* After the callback the session holds only the user id (the claim OIDC_USER_CLAIM) and the time of
  sign-in. Sign-out clears it; the console then goes to the provider's end_session_endpoint, when it
  has one.
* A user the authority does not know is created (CreateUser) on first sign-in when
  OIDC_AUTO_CREATE_USERS is on, and refused otherwise. Org membership and roles come from the
  authority on every console request, never from the provider's claims.
* The REST API takes the provider's JWT access tokens too (access_tokens.py): the same claim names
  the user, who must be known to the authority (or is created, when allowed).
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import urlsplit

import grpc
import httpx
from authlib.integrations.starlette_client import OAuth, OAuthError
from starlette.requests import Request

from credit.v1 import admin_pb2

from . import acting, errors
from .access_tokens import AccessTokens, Jwks, KeysUnavailable, TokenRefused
from .authority_client import ApiKey, AuthorityClient, to_api_error
from .settings import SsoSettings

log = logging.getLogger("inference_service.sso")

CALLBACK_PATH = "/auth/oidc/callback"
LOGIN_PATH = "/auth/oidc/login"
AFTER_SIGN_IN = "/console/"
SESSION_COOKIE = "credit_console_session"
SESSION_USER = "sso_user"  # {"user_id", "signed_in_at"}
SESSION_ERROR = "sso_error"  # why the last sign-in failed, shown once by the console
MIN_SESSION_SECRET = 32


class SignInRefused(Exception):
    """The provider's answer does not sign anyone in; the message is shown on the console."""


def label(value: Any) -> str:
    """A display name or e-mail from a claim, as the authority takes labels (printable, ≤ 256)."""
    return "".join(ch for ch in value if ch.isprintable())[:256] if isinstance(value, str) else ""


class Sso:
    """The relying party (the console's sign-in) and the users the provider's tokens name."""

    def __init__(self, settings: SsoSettings, key_cache_seconds: float):
        if len(settings.session_secret) < MIN_SESSION_SECRET:
            raise RuntimeError(f"OIDC_ISSUER is set: CONSOLE_SESSION_SECRET must be set too (at least "
                               f"{MIN_SESSION_SECRET} characters, the same on every replica); it signs the "
                               "console's session cookie")
        self.settings = settings
        oauth = OAuth()
        oauth.register("provider", client_id=settings.client_id, client_secret=settings.client_secret,
                       server_metadata_url=f"{settings.issuer.rstrip('/')}/.well-known/openid-configuration",
                       client_kwargs={"scope": settings.scopes, "code_challenge_method": "S256"})
        self.client = oauth.create_client("provider")
        self.tokens = AccessTokens(issuer=self._issuer, audience=settings.audience or settings.client_id,
                                   user_claim=settings.user_claim, leeway=settings.leeway_seconds,
                                   jwks=Jwks(self._jwks_uri, settings.jwks_cache_seconds))
        self._known: dict[str, float] = {}  # user id → until when it is known to exist
        self._known_seconds = key_cache_seconds

    @property
    def provider_name(self) -> str:
        return self.settings.provider_name or urlsplit(self.settings.issuer).hostname or self.settings.issuer

    async def metadata(self) -> dict[str, Any]:
        """The provider's discovery document (loaded once); 503 while the provider cannot be reached."""
        try:
            return await self.client.load_server_metadata()
        except Exception as error:  # httpx's errors, a bad document
            log.warning("the identity provider's discovery document could not be loaded: %s", error)
            raise errors.unavailable("The identity provider cannot be reached; try again shortly.") from None

    async def _issuer(self) -> str:
        return (await self.metadata())["issuer"]

    async def _jwks_uri(self) -> str:
        return (await self.metadata())["jwks_uri"]

    def redirect_base(self, request: Request) -> str:
        return (self.settings.redirect_base or str(request.base_url)).rstrip("/")

    # ---- the console's sign-in ----

    async def start(self, request: Request) -> Any:
        """The redirect to the provider's authorization endpoint (state, nonce and PKCE in the session)."""
        await self.metadata()
        return await self.client.authorize_redirect(request, self.redirect_base(request) + CALLBACK_PATH)

    async def finish(self, request: Request, authority: AuthorityClient) -> str:
        """The callback: code → tokens (ID token checked by Authlib) → the user id, known to the authority."""
        try:
            token = await self.client.authorize_access_token(request)
        except OAuthError as error:
            raise SignInRefused(f"The identity provider refused the sign-in: {error.description or error.error}.") \
                from None
        except httpx.HTTPError as error:
            log.warning("the identity provider could not be reached at the callback: %s", error)
            raise SignInRefused("The identity provider could not be reached; try again shortly.") from None
        claims = dict(token.get("userinfo") or {})
        if self.settings.user_claim not in claims:  # some providers put profile claims in userinfo only
            claims.update(await self.client.userinfo(token=token))
        try:
            user_id = self.tokens.user_id(claims)
        except TokenRefused as refused:
            raise SignInRefused(str(refused).replace("access token", "identity provider's answer")) from None
        acting.act_for(user_id, "session")  # a first sign-in's CreateUser names them in the audit log
        if not await self.known_user(authority, user_id, claims):
            raise SignInRefused(f"'{user_id}' is not a user of the credit authority; ask an operator to add you.")
        request.session.pop(SESSION_ERROR, None)
        request.session[SESSION_USER] = {"user_id": user_id, "signed_in_at": int(time.time())}
        return user_id

    async def end_session_url(self, request: Request) -> str | None:
        """Where the browser goes after sign-out: the provider's end_session_endpoint, back to the console."""
        if not (await self.metadata()).get("end_session_endpoint"):
            return None
        result = await self.client.create_logout_url(
            post_logout_redirect_uri=self.redirect_base(request) + AFTER_SIGN_IN, client_id=self.settings.client_id)
        return result["url"]

    @staticmethod
    def session_user(request: Request) -> str | None:
        user = request.session.get(SESSION_USER) if "session" in request.scope else None
        return user.get("user_id") if isinstance(user, dict) else None

    # ---- who a token or a session names ----

    async def bearer(self, token: str, authority: AuthorityClient) -> ApiKey:
        """The caller a provider's access token names (TokenRefused when it does not pass)."""
        try:
            claims = await self.tokens.verify(token)
        except KeysUnavailable as error:
            log.warning("the identity provider's keys could not be fetched: %s", error)
            raise errors.unavailable("The identity provider's keys cannot be fetched; no token can be checked "
                                     "now. Retry shortly.") from None
        user_id = self.tokens.user_id(claims)
        acting.act_for(user_id, "access_token")
        if not await self.known_user(authority, user_id, claims):
            raise TokenRefused(f"The access token names '{user_id}', who is not a user of the credit authority.")
        return ApiKey("", user_id, "", False)

    async def known_user(self, authority: AuthorityClient, user_id: str, claims: dict[str, Any]) -> bool:
        """Whether the authority knows the user; creates them first when OIDC_AUTO_CREATE_USERS is on."""
        now = time.monotonic()
        if self._known.get(user_id, 0.0) > now:
            return True
        if self.settings.auto_create_users:
            await create_user(authority, user_id, claims)
        else:
            try:
                await authority.balance(user_id, "")
            except errors.ApiError as error:
                if error.status == 404:
                    return False
                raise
        if len(self._known) > 10_000:
            self._known.clear()
        self._known[user_id] = now + self._known_seconds
        return True


async def create_user(authority: AuthorityClient, user_id: str, claims: dict[str, Any]) -> None:
    """CreateUser from the provider's claims; a user who exists already is left as they are."""
    request = admin_pb2.CreateUserRequest(user_id=user_id, display_name=label(claims.get("name")) or user_id,
                                          email=label(claims.get("email")))
    try:
        await authority.admin.create_user(request)
        log.info("created user %s on first sign-in", user_id)
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise to_api_error(error) from None
