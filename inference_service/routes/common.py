"""What the routers share: the service from app state, the caller dependency, the documented errors."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from pydantic import BaseModel

from .. import acting
from ..service import Caller, InferenceService


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorBody(BaseModel):
    """OpenAI's error body."""

    error: ErrorDetail


BILLED: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody, "description": text} for code, text in (
    (400, "bad request"), (401, "missing or invalid API key"),
    (402, "insufficient credits, or X-Max-Cost below a minimal call"),
    (403, "not allowed (organization, service key scope)"), (404, "unknown model"),
    (409, "Idempotency-Key already used"), (413, "body too large"), (415, "not JSON"),
    (429, "rate limit reached (Retry-After, retry-after-ms), or too many failed authentication attempts"),
    (502, "model provider failed; hold released"),
    (503, "credit authority unavailable; no model called"))}
READS: dict[int | str, dict[str, Any]] = {code: BILLED[code] for code in (400, 401, 403, 404, 429, 503)}


def service_of(request: Request) -> InferenceService:
    return request.app.state.service


async def caller(request: Request) -> Caller:
    """The authenticated caller (401/429 otherwise), and who the authority is told acts (acting.py)."""
    acting.begin(request)
    who = await service_of(request).authenticate(request)
    acting.act_for(who.key.user_id, who.signed_in_with, who.key.key_id, who.key.is_service)
    return who
