"""The other OpenAI-compatible endpoints under /api/v1/llm: embeddings and audio transcriptions (billed
like chat: estimate → Reserve → call → Commit) and moderations (not billed, rate-limited; see
metering_modes.py)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from .. import errors
from ..audio import UnreadableAudio, read_duration
from ..metering_modes import OtherModes
from ..schemas import EmbeddingRequest, ModerationRequest, TranscriptionForm
from ..service import Caller
from .common import BILLED, caller, service_of

router = APIRouter(prefix="/api/v1/llm", tags=["llm"])


@router.post("/embeddings", responses=BILLED)
async def embeddings(body: EmbeddingRequest, request: Request, who: Caller = Depends(caller)):
    """OpenAI embeddings: billed for the input tokens the provider reports."""
    service = service_of(request)
    entry = service.model(body.model, "embedding")
    return await OtherModes(service.meter).embeddings(entry, body, service.billing(who, request, body.user))


@router.post("/audio/transcriptions", responses=BILLED)
async def audio_transcriptions(
        request: Request, file: UploadFile = File(..., description="The audio: WAV (PCM)"),
        model: str = Form(...), language: str | None = Form(None), prompt: str | None = Form(None),
        response_format: str | None = Form(None), temperature: str | None = Form(None),
        timestamp_granularities: list[str] | None = Form(None, alias="timestamp_granularities[]"),
        user: str | None = Form(None), who: Caller = Depends(caller)):
    """OpenAI audio transcriptions (multipart/form-data): billed per second of audio."""
    fields = {"model": model, "language": language, "prompt": prompt, "response_format": response_format,
              "temperature": temperature, "timestamp_granularities": timestamp_granularities, "user": user}
    try:
        form = TranscriptionForm.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:  # answered as every other bad field: 400 naming it
        raise RequestValidationError(exc.errors()) from None
    service = service_of(request)
    entry = service.model(form.model, "audio_transcription")
    limit = service.settings.max_upload_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise errors.ApiError(413, f"file: larger than {limit} bytes", "invalid_request_error", "request_too_large")
    if not data:
        raise errors.bad_request("file: is empty", "invalid_file")
    try:
        audio = read_duration(data)
    except UnreadableAudio as exc:
        raise errors.bad_request(f"file: {exc}", "unsupported_audio_format") from None
    return await OtherModes(service.meter).transcription(entry, form, audio, data,
                                                         service.billing(who, request, form.user))


@router.post("/moderations", responses=BILLED)
async def moderations(body: ModerationRequest, request: Request, who: Caller = Depends(caller)):
    """OpenAI moderations: not billed (X-Cost-Incurred 0.000), but under the caller's rate limits."""
    service = service_of(request)
    entry = service.model(body.model, "moderation")
    return await OtherModes(service.meter).moderation(entry, body, service.billing(who, request, body.user))
