"""The billed OpenAI-compatible endpoints under /api/v1/llm."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ..responses_api import create_response
from ..responses_schema import ResponsesRequest
from ..schemas import ChatCompletionRequest, ImageGenerationRequest
from ..service import Caller
from .common import BILLED, READS, caller, service_of

router = APIRouter(prefix="/api/v1/llm", tags=["llm"])


@router.post("/chat/completions", responses=BILLED)
async def chat_completions(body: ChatCompletionRequest, request: Request, who: Caller = Depends(caller)):
    """OpenAI chat completions, with `stream: true` as Server-Sent Events."""
    return await service_of(request).chat(who, body, request)


@router.post("/images/generations", responses=BILLED)
async def image_generations(body: ImageGenerationRequest, request: Request, who: Caller = Depends(caller)):
    """OpenAI image generation."""
    return await service_of(request).images(who, body, request)


@router.post("/responses", responses=BILLED)
async def responses(body: ResponsesRequest, request: Request, who: Caller = Depends(caller)):
    """OpenAI's Responses API, with `stream: true` as its events; no stored state (previous_response_id and
    store: true are refused). Billed as chat, under service type `responses`."""
    return await create_response(service_of(request), who, body, request)


@router.get("/models", responses=READS)
async def list_models(request: Request, who: Caller = Depends(caller)):
    """Models this deployment serves."""
    return {"object": "list", "data": [
        {"id": name, "object": "model", "created": 0, "owned_by": entry.provider,
         "mode": entry.mode} for name, entry in sorted(service_of(request).models.items())]}
