"""POST /audio/transcriptions: the key is checked before the upload is read, and a bounded number of uploads
are in the process at once (INFERENCE_MAX_CONCURRENT_UPLOADS; past it, 429 with Retry-After)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from invariants import row_counts
from media_support import multipart, wav
from rest_support import InferenceProcess

PATH = "/api/v1/llm/audio/transcriptions"
ANNOUNCED = 20 * 1024 * 1024  # the body the client announces: under the upload limit, never sent in full
ANSWER_GUARD_SECONDS = 20  # a guard against a hang (the failure this file exists for), not a timing assertion


async def open_upload(port: int, authorization: str | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A transcription upload that announces ANNOUNCED bytes and sends only its first part, then waits."""
    boundary = "gate-boundary-7d1e"
    first_part = (f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nup-transcribe\r\n'
                  f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
                  f'Content-Type: audio/wav\r\n\r\n').encode() + wav(1) + b"\0" * 65536
    head = [f"POST {PATH} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {ANNOUNCED}",
            f"Content-Type: multipart/form-data; boundary={boundary}"]
    if authorization is not None:
        head.append(f"Authorization: {authorization}")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + first_part)
    await writer.drain()
    return reader, writer


async def status_of(reader: asyncio.StreamReader) -> int:
    line = await asyncio.wait_for(reader.readline(), ANSWER_GUARD_SECONDS)
    assert line.startswith(b"HTTP/1.1 "), line
    return int(line.split()[1])


@pytest.mark.parametrize("authorization", [None, "Bearer sk-not-a-key-0123456789", "Basic dXNlcjpwYXNz"],
                         ids=["no-key", "unknown-key", "basic"])
async def test_an_upload_without_a_valid_key_is_refused_before_its_body_is_read(inference, db, upstream,
                                                                                authorization):
    """401 while most of the announced body is still unsent: the service neither waits for it nor spools it."""
    before, calls = await row_counts(db), sum(upstream.calls.values())
    reader, writer = await open_upload(inference.port, authorization)
    try:
        assert await status_of(reader) == 401
    finally:
        writer.close()
    assert await row_counts(db) == before and sum(upstream.calls.values()) == calls


@pytest.fixture(scope="module")
def one_upload(authority, tokens, models_file):
    process = InferenceProcess(authority, tokens.spend, models_file,
                               {"INFERENCE_MAX_CONCURRENT_UPLOADS": "1"}).start()
    yield process
    process.stop()


def probe(inference: InferenceProcess, key: str) -> httpx.Response:
    """A small upload with an empty file: 400 when it gets an upload slot, 429 when none is free."""
    body, content_type = multipart({"model": "up-transcribe"}, {"file": ("a.wav", b"", "audio/wav")})
    return httpx.post(inference.url + PATH, content=body, timeout=30,
                      headers={"Authorization": f"Bearer {key}", "Content-Type": content_type})


def probe_until(inference: InferenceProcess, key: str, status: int) -> httpx.Response:
    """Probes until one is answered `status` (the held upload reaches its slot, or gives it back, in its own
    time); fails, rather than hangs, if that never happens."""
    deadline = time.monotonic() + ANSWER_GUARD_SECONDS
    while True:
        response = probe(inference, key)
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


async def test_uploads_past_the_concurrency_bound_are_refused_429_until_a_slot_is_free(one_upload, member, db,
                                                                                       upstream):
    assert probe(one_upload, member.key).status_code == 400, "a free slot: the empty file is refused"
    reader, writer = await open_upload(one_upload.port, f"Bearer {member.key}")  # holds the only slot
    try:
        before, calls = await row_counts(db), sum(upstream.calls.values())
        refused = await asyncio.to_thread(probe_until, one_upload, member.key, 429)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "too_many_uploads" and int(refused.headers["Retry-After"]) >= 1
        assert await row_counts(db) == before and sum(upstream.calls.values()) == calls
    finally:
        writer.close()
    freed = await asyncio.to_thread(probe_until, one_upload, member.key, 400)  # the slot comes back on disconnect
    assert freed.status_code == 400, freed.text
