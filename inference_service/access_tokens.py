"""The identity provider's access tokens as an alternative to API keys (README, "Signing in").

A bearer that looks like a JWT (three dot-separated parts, a JSON header) is checked with joserfc,
the JOSE library Authlib builds on: its signature against the provider's published keys (the JWKS
from the discovery document, cached; an unknown key id refetches it, at most every
JWKS_MIN_REFRESH_SECONDS), an asymmetric algorithm, the issuer, the audience, and the expiry (with
the configured leeway). The claim OIDC_USER_CLAIM names the user; who that user is in which org,
and with which role, is the authority's business, never the token's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    InvalidKeyIdError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import KeySet

from credit_service.ids import ID

# Asymmetric signatures only: an HMAC "signed" with the provider's public key must not pass.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
JWKS_MIN_REFRESH_SECONDS = 10.0
MAX_TOKEN_CHARS = 16_384


class KeysUnavailable(Exception):
    """The provider's JWKS could not be fetched and none is cached: no token can be checked (503)."""


class TokenRefused(Exception):
    """The access token does not pass; the message says why (shown to the caller in the 401)."""


def looks_like_jwt(secret: str) -> bool:
    """A compact JWS: header.payload.signature, the header a JSON object ("eyJ…"). API keys
    (ck_….secret) never look like this."""
    return secret.startswith("eyJ") and secret.count(".") == 2


class Jwks:
    """The provider's signing keys, fetched from `jwks_uri` and kept `ttl` seconds."""

    def __init__(self, jwks_uri: Callable[[], Awaitable[str]], ttl: float, timeout: float = 5.0):
        self._jwks_uri = jwks_uri
        self._ttl = ttl
        self._timeout = timeout
        self._keys: KeySet | None = None
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def keys(self, *, refresh: bool = False) -> KeySet:
        """The cached keys; fetched again when stale, or on `refresh` unless fetched moments ago."""
        async with self._lock:
            age = time.monotonic() - self._fetched_at
            stale = self._keys is None or age >= self._ttl or (refresh and age >= JWKS_MIN_REFRESH_SECONDS)
            if stale:
                try:
                    async with httpx.AsyncClient(timeout=self._timeout) as http:
                        response = await http.get(await self._jwks_uri())
                        response.raise_for_status()
                    self._keys = KeySet.import_key_set(response.json())
                except (httpx.HTTPError, ValueError, JoseError) as error:
                    if self._keys is None:  # no keys to check with: fail closed (503)
                        raise KeysUnavailable(str(error)) from None
                    return self._keys  # keep the last keys while the provider is away
                self._fetched_at = time.monotonic()
            assert self._keys is not None
            return self._keys


class AccessTokens:
    """Checks the provider's JWT access tokens; `verify` answers the claims of a token that passes."""

    def __init__(self, *, issuer: Callable[[], Awaitable[str]], audience: str, user_claim: str, leeway: int,
                 jwks: Jwks):
        self._issuer = issuer
        self._audience = audience
        self._user_claim = user_claim
        self._leeway = leeway
        self.jwks = jwks

    async def _decode(self, token: str) -> jwt.Token:
        try:
            return jwt.decode(token, await self.jwks.keys(), algorithms=ALGORITHMS)
        except InvalidKeyIdError:  # the provider may have rotated its keys
            return jwt.decode(token, await self.jwks.keys(refresh=True), algorithms=ALGORITHMS)

    async def verify(self, token: str) -> dict[str, Any]:
        if len(token) > MAX_TOKEN_CHARS:
            raise TokenRefused("The access token is too long.")
        try:
            claims = (await self._decode(token)).claims
            jwt.JWTClaimsRegistry(
                leeway=self._leeway,
                iss={"essential": True, "value": await self._issuer()},
                aud={"essential": True, "value": self._audience},
                exp={"essential": True},
            ).validate(claims)
        except BadSignatureError:
            raise TokenRefused("The access token's signature does not verify with the provider's keys.") from None
        except InvalidKeyIdError:
            raise TokenRefused("The access token is signed with a key the provider does not publish.") from None
        except ExpiredTokenError:
            raise TokenRefused("The access token has expired.") from None
        except MissingClaimError as error:
            raise TokenRefused(f"The access token lacks the claim(s) {error.claim}.") from None
        except InvalidClaimError as error:
            raise TokenRefused(refusal(error.claim, self._audience)) from None
        except (JoseError, ValueError, TypeError):
            raise TokenRefused("The access token is not a valid signed JWT.") from None
        return claims

    def user_id(self, claims: dict[str, Any]) -> str:
        """The authority's user id: the configured claim, which must be an id."""
        value = claims.get(self._user_claim)
        if not isinstance(value, str) or not ID.fullmatch(value):
            raise TokenRefused(f"The access token's '{self._user_claim}' claim is not a user id "
                               "(1-128 of A-Z a-z 0-9 . _ : @ -).")
        return value


def refusal(claim: str, audience: str) -> str:
    """Why a token with this invalid claim is refused."""
    if claim == "aud":
        return f"The access token is for another audience (this service accepts '{audience}')."
    if claim == "iss":
        return "The access token was issued by another issuer."
    return f"The access token's '{claim}' claim is not valid (not yet valid, or issued in the future)."
