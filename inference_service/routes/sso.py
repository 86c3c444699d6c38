"""The console's sign-in through an identity provider (sso.py): the redirect to the provider, the
callback, sign-out, and what the console page needs to know (GET /api/v1/console/sso)."""

from __future__ import annotations

import logging
from enum import Enum

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse

from .. import acting, errors
from ..sso import AFTER_SIGN_IN, CALLBACK_PATH, LOGIN_PATH, SESSION_ERROR, SESSION_USER, SignInRefused, Sso

log = logging.getLogger("inference_service.sso")
TAGS: list[str | Enum] = ["console"]
router = APIRouter()


def sso_of(request: Request) -> Sso:
    sso = request.app.state.service.sso
    if sso is None:
        raise errors.not_found("Sign-in through an identity provider is not configured here (OIDC_ISSUER).")
    return sso


@router.get("/api/v1/console/sso", tags=TAGS)
async def sso_status(request: Request):
    """Whether the console offers "Sign in with <provider>", whether this browser's session is signed in,
    and why the last sign-in failed (said once)."""
    sso = request.app.state.service.sso
    if sso is None:
        return {"enabled": False, "provider": None, "login_url": None, "signed_in": False, "error": None}
    return {"enabled": True, "provider": sso.provider_name, "login_url": LOGIN_PATH,
            "signed_in": Sso.session_user(request) is not None, "error": request.session.pop(SESSION_ERROR, None)}


@router.get(LOGIN_PATH, include_in_schema=False)
async def sign_in(request: Request):
    """To the provider's authorization endpoint (code flow, PKCE S256, state and nonce)."""
    return await sso_of(request).start(request)


@router.get(CALLBACK_PATH, include_in_schema=False)
async def callback(request: Request):
    """The provider sends the browser back here with a code; on success the session is signed in. Either
    way the browser goes back to the console, which shows a failure's reason."""
    sso = sso_of(request)
    request.session.pop(SESSION_USER, None)
    acting.begin(request)
    try:
        user_id = await sso.finish(request, request.app.state.service.client)
        log.info("console sign-in through %s: %s", sso.provider_name, user_id)
    except SignInRefused as refused:
        request.session[SESSION_ERROR] = str(refused)
    return RedirectResponse(AFTER_SIGN_IN, status_code=303)


@router.post("/api/v1/console/sso/sign-out", tags=TAGS)
async def sign_out(request: Request):
    """Clears the session; answers where the browser may go to end the provider's session too."""
    sso = sso_of(request)
    request.session.clear()
    return {"signed_out": True, "end_session_url": await sso.end_session_url(request)}
