"""The OpenAI-compatible REST front door: create_app wires the middleware, the error handlers and
the routers (routes/). Every billed call is estimate → Reserve → LiteLLM → Commit (or Release),
through the authority (metering.py).

Fail closed: if the authority cannot be reached, no model is called (503).
Never lose usage: once a model answered, the Commit is retried, queued in a
durable outbox if need be, and a stream cut by the client is still charged.
"""

from __future__ import annotations

import ipaddress

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware

from . import errors, metrics
from .edge import Edge
from .payments import Payments
from .quiet_litellm import skip_unobserved_success_logging
from .routes import console, credits, limits, llm, modes, payments, reports, sso
from .service import InferenceService
from .settings import Settings
from .sso import SESSION_COOKIE


def add_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's body shape: {"error": {"message", "type", "code", "param"}}."""

    @app.exception_handler(errors.ApiError)
    async def api_error(request: Request, exc: errors.ApiError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        # The deepest location names the field best (a union's first branch says only "not a string").
        first = max(exc.errors(), key=lambda e: len(e.get("loc", ())), default={"loc": (), "msg": "invalid request"})
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
        return JSONResponse(errors.bad_request(message).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        body = {"error": {"message": str(exc.detail), "type": "invalid_request_error", "code": kind, "param": None}}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def from_loopback(request: Request) -> bool:
    """Whether the request's peer is this machine (127.0.0.0/8, ::1)."""
    try:
        return request.client is not None and ipaddress.ip_address(request.client.host).is_loopback
    except ValueError:
        return False


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    skip_unobserved_success_logging()
    service = InferenceService(settings)

    async def lifespan(app: FastAPI):
        await service.start()
        yield
        await service.stop()

    # redirect_slashes off: a path with a stray slash (DELETE /api/v1/console/keys/) is 404, never a 307 to
    # another route that a client (or its SDK, which follows redirects) would then call with the same method.
    app = FastAPI(title="LLM inference, billed by the credit authority", version="0.1.0", lifespan=lifespan,
                  redirect_slashes=False,
                  description="OpenAI-compatible endpoints under /api/v1/llm. Every billed response carries "
                              "X-Cost-Incurred, X-Credits-Remaining (credits), X-Request-Id and X-Funding-Source.")
    app.state.service = service
    app.state.payments = Payments.from_settings(settings)  # refuses prices it cannot charge exactly
    app.add_middleware(Edge, max_body_bytes=settings.max_body_bytes, max_upload_bytes=settings.max_upload_bytes)
    if service.sso is not None:  # the console's SSO session: signed, HttpOnly, SameSite=Lax
        app.add_middleware(SessionMiddleware, secret_key=settings.sso.session_secret, session_cookie=SESSION_COOKIE,
                           max_age=settings.sso.session_seconds, same_site="lax",
                           https_only=settings.sso.session_https_only)
    add_error_handlers(app)
    app.include_router(llm.router)
    app.include_router(modes.router)  # embeddings, audio transcriptions, moderations
    app.include_router(credits.router)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics(request: Request):
        if not settings.metrics_remote and not from_loopback(request):  # as if there were no such page
            raise StarletteHTTPException(404, "Not Found")
        metrics.OUTBOX_PENDING.set(service.client.outbox.count())
        metrics.OUTBOX_REFUSED.set(service.client.outbox.refused_count())
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", include_in_schema=False)
    async def healthz():
        return {"status": "ok", "models": len(service.models)}

    app.include_router(console.router)  # the org console (/console, /api/v1/console)
    app.include_router(payments.router)  # buying credits (/api/v1/console/org/checkout, Stripe's webhook)
    app.include_router(reports.router)  # statements and forecasts (/api/v1/console/statement, /forecast)
    app.include_router(limits.router)  # rate limits (/api/v1/console/limits)
    app.include_router(sso.router)  # sign-in through an identity provider (/auth/oidc/…, /api/v1/console/sso)
    return app
