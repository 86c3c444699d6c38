"""The REST service's edge, as one plain ASGI middleware (Starlette's
BaseHTTPMiddleware costs a task and a copy per request): body size limit,
JSON content type (multipart/form-data up to the upload limit on the upload
paths), strict JSON (no NaN/Infinity, bounded nesting, no lone
surrogate escapes), metrics,
and one JSON access-log line per request (never headers, so never keys)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import errors, metrics

log = logging.getLogger("inference_service")

MAX_JSON_DEPTH = 64
# POST paths that take a file (multipart/form-data) instead of JSON, and the room the form's other
# fields and framing may take besides the file itself.
UPLOAD_PATHS = frozenset({"/api/v1/llm/audio/transcriptions"})
FORM_OVERHEAD_BYTES = 64 * 1024


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def strict_json_problem(body: bytes) -> str | None:
    """Why a body is not acceptable JSON (NaN, Infinity, bad UTF-8, nesting), or None."""
    try:
        value = json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        return "JSON nested too deeply"
    except (ValueError, UnicodeDecodeError) as exc:
        return f"Request body is not valid JSON: {str(exc)[:120]}"
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if len(path) >= MAX_JSON_DEPTH:
            return f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
        if isinstance(item, dict):
            stack.extend((key, (*path, key)) for key in item)
            stack.extend((child, (*path, key)) for key, child in item.items())
        elif isinstance(item, list):
            stack.extend((child, (*path, i)) for i, child in enumerate(item))
        elif isinstance(item, str) and not _is_unicode(item):
            where = ".".join(str(p) for p in path).encode("utf-8", "backslashreplace").decode() or "body"
            return f"{where}: has a lone surrogate escape (\\ud800-\\udfff), not valid Unicode text"
    if not isinstance(value, dict):
        return "Request body must be a JSON object"
    return None


def _error(error: errors.ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


class Edge:
    def __init__(self, app: ASGIApp, max_body_bytes: int, max_upload_bytes: int = 25 * 1024 * 1024):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if scope["method"] == "POST" and scope["path"] in UPLOAD_PATHS:
                await self._upload(scope, receive, observed_send)
            elif scope["method"] == "POST":
                body, problem = await self._read_json(scope, receive)
                if problem is not None:
                    await _error(problem)(scope, receive, observed_send)
                    return
                delivered = False

                async def replay() -> Message:
                    nonlocal delivered
                    if not delivered:
                        delivered = True
                        return {"type": "http.request", "body": body, "more_body": False}
                    return await receive()  # then disconnects, as the server reports them

                await self.app(scope, replay, observed_send)
            else:
                await self.app(scope, receive, observed_send)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            elapsed = time.perf_counter() - started
            metrics.HTTP_REQUESTS.labels(route, str(status)).inc()
            metrics.HTTP_LATENCY.labels(route).observe(elapsed)
            if route != "/metrics":
                log.info("http", extra={"method": scope["method"], "route": route, "status": status,
                                        "ms": round(elapsed * 1000, 2),
                                        "request_id": scope.get("state", {}).get("request_id")})

    async def _upload(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A multipart upload, streamed to the app (Starlette spools the file) and counted: past the limit
        the app is told the client left, and its answer is replaced by a 413."""
        headers = dict(scope["headers"])
        limit = self.max_upload_bytes + FORM_OVERHEAD_BYTES
        too_large = errors.ApiError(413, f"Upload larger than {self.max_upload_bytes} bytes.",
                                    "invalid_request_error", "request_too_large")
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _error(too_large)(scope, receive, send)
            return
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if content_type != b"multipart/form-data":
            await _error(errors.ApiError(415, "Content-Type must be multipart/form-data (the audio file and the "
                                              "form fields).", "invalid_request_error", "unsupported_media_type"))(
                scope, receive, send)
            return
        size, over = 0, False

        async def counted() -> Message:
            nonlocal size, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def unless_over(message: Message) -> None:
            if not over:  # the app's answer to a body it could not finish reading is replaced below
                await send(message)

        await self.app(scope, counted, unless_over)
        if over:
            await _error(too_large)(scope, receive, send)

    async def _read_json(self, scope: Scope, receive: Receive) -> tuple[bytes, errors.ApiError | None]:
        headers = dict(scope["headers"])
        too_large = errors.ApiError(413, f"Request body larger than {self.max_body_bytes} bytes.",
                                    "invalid_request_error", "request_too_large")
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return b"", too_large
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if content_type != b"application/json":
            return b"", errors.ApiError(415, "Content-Type must be application/json.", "invalid_request_error",
                                        "unsupported_media_type")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return b"", too_large
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        problem = strict_json_problem(body)
        return body, errors.bad_request(problem, "invalid_json") if problem else None
