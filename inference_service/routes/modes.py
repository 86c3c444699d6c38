"""The other OpenAI-compatible endpoints under /api/v1/llm: embeddings and audio transcriptions (billed
like chat: estimate → Reserve → call → Commit) and moderations (not billed, rate-limited; see
metering_modes.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.requests import ClientDisconnect

from .. import errors
from ..audio import UnreadableAudio, read_duration
from ..metering_modes import OtherModes
from ..schemas import EmbeddingRequest, ModerationRequest, TranscriptionForm
from ..service import Caller
from .common import BILLED, ErrorBody, caller, service_of

router = APIRouter(prefix="/api/v1/llm", tags=["llm"])


@router.post("/embeddings", responses=BILLED)
async def embeddings(body: EmbeddingRequest, request: Request, who: Caller = Depends(caller)):
    """OpenAI embeddings: billed for the input tokens the provider reports."""
    service = service_of(request)
    entry = service.model(body.model, "embedding")
    return await OtherModes(service.meter).embeddings(entry, body, service.billing(who, request, body.user))


TEXT_FIELDS = ("model", "language", "prompt", "response_format", "temperature", "user")
GRANULARITIES = "timestamp_granularities[]"
MAX_FORM_FIELDS = 32
# The form is read in the handler, after the key was checked (a File or Form parameter would make FastAPI
# read and spool the whole upload before any dependency runs): so its schema is declared here.
TRANSCRIPTION_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {"multipart/form-data": {
    "schema": {"type": "object", "required": ["file", "model"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "The audio: WAV (PCM)"},
        **{name: {"type": "string"} for name in TEXT_FIELDS},
        GRANULARITIES: {"type": "array", "items": {"type": "string", "enum": ["word", "segment"]}}}}}}}}
UPLOAD_RESPONSES = {**BILLED, 429: {"model": ErrorBody, "description": BILLED[429]["description"] + "; or "
                                    "INFERENCE_MAX_CONCURRENT_UPLOADS uploads already in this process"}}


def transcription_form(fields: FormData) -> tuple[TranscriptionForm, UploadFile]:
    """The form's text fields, validated, and its file; 400 naming the first bad field."""
    values: dict[str, Any] = {}
    problems: list[dict[str, Any]] = []
    for name in TEXT_FIELDS:
        value = fields.get(name)
        if isinstance(value, str):
            values[name] = value
        elif value is not None:
            problems.append({"type": "string_type", "loc": ("body", name), "msg": "must be a text field"})
    granularities = fields.getlist(GRANULARITIES)
    if any(not isinstance(value, str) for value in granularities):
        problems.append({"type": "string_type", "loc": ("body", GRANULARITIES), "msg": "must be text fields"})
    elif granularities:
        values["timestamp_granularities"] = granularities
    file = fields.get("file")
    if not isinstance(file, UploadFile):
        problems.append({"type": "missing", "loc": ("body", "file"),
                         "msg": "Field required" if file is None else "must be a file, not a text field"})
    if problems:
        raise RequestValidationError(problems)
    try:
        form = TranscriptionForm.model_validate(values)
    except ValidationError as exc:  # answered as every other bad field: 400 naming it
        raise RequestValidationError(exc.errors()) from None
    assert isinstance(file, UploadFile)
    return form, file


@router.post("/audio/transcriptions", responses=UPLOAD_RESPONSES, openapi_extra=TRANSCRIPTION_BODY)
async def audio_transcriptions(request: Request, who: Caller = Depends(caller)):
    """OpenAI audio transcriptions (multipart/form-data): billed per second of audio.

    The key is checked before a byte of the upload is read (401 with the body unread), and at most
    INFERENCE_MAX_CONCURRENT_UPLOADS uploads are read and held in this process at once: past it, 429 with
    Retry-After at once (the SDKs retry it), rather than a wait that would hold the client's connection."""
    service = service_of(request)
    slots = service.upload_slots
    if slots.locked():
        raise errors.ApiError(429, "Too many audio uploads in progress on this server; retry shortly. Nothing was "
                                   "charged and no model was called.", "rate_limit_error", "too_many_uploads",
                              headers={"Retry-After": "1"})
    async with slots:
        try:
            async with request.form(max_files=1, max_fields=MAX_FORM_FIELDS) as fields:
                form, file = transcription_form(fields)
                entry = service.model(form.model, "audio_transcription")
                limit = service.settings.max_upload_bytes
                data = await file.read(limit + 1)
        except ClientDisconnect:  # the client left, or the edge cut an upload past the limit (it answers 413)
            raise errors.bad_request("file: the upload ended before its end", "invalid_file") from None
        if len(data) > limit:
            raise errors.ApiError(413, f"file: larger than {limit} bytes", "invalid_request_error",
                                  "request_too_large")
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
