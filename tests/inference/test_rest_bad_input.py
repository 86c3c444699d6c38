"""Hostile and bad REST input: each gets its documented status in OpenAI's
error shape, and nothing is written and no model is called."""

from __future__ import annotations

import json

import httpx
import pytest
from invariants import row_counts
from media_support import multipart, two_data_chunks, wav

GOOD = {"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}]}
SQL = "x'; DROP TABLE users; --"


def chat(**changes):
    body = {**GOOD, **changes}
    return {k: v for k, v in body.items() if v is not ...}


def raw(text: str):
    return text.encode()


CASES = {
    # (path, body (dict → JSON, bytes → as is), extra headers, expected status)
    "max_tokens as string": ("chat", chat(max_tokens="ten"), {}, 400),
    "max_tokens 2^63": ("chat", chat(max_tokens=2**63), {}, 400),
    "max_tokens negative": ("chat", chat(max_tokens=-1), {}, 400),
    "max_tokens zero": ("chat", chat(max_tokens=0), {}, 400),
    "max_tokens float": ("chat", chat(max_tokens=1.5), {}, 400),
    "n zero": ("chat", chat(n=0), {}, 400),
    "n 2^63": ("chat", chat(n=2**63), {}, 400),
    "temperature NaN": ("chat", raw('{"model":"demo-chat","messages":[{"role":"user","content":"hi"}],'
                                    '"temperature":NaN}'), {}, 400),
    "temperature Infinity": ("chat", raw('{"model":"demo-chat","messages":[{"role":"user","content":"hi"}],'
                                         '"temperature":Infinity}'), {}, 400),
    "NaN hidden in tools": ("chat", raw('{"model":"demo-chat","messages":[{"role":"user","content":"hi"}],'
                                        '"tools":[{"x":-Infinity}]}'), {}, 400),
    "malformed JSON": ("chat", raw('{"model": "demo-chat", "messages": ['), {}, 400),
    "JSON array body": ("chat", raw("[1, 2, 3]"), {}, 400),
    "JSON string body": ("chat", raw('"hello"'), {}, 400),
    "empty body": ("chat", raw(""), {}, 400),
    "invalid UTF-8": ("chat", b'{"model": "demo-chat\xff\xfe", "messages": []}', {}, 400),
    "deeply nested JSON": ("chat", raw('{"model":"demo-chat","messages":[{"role":"user","content":"hi"}],"x":'
                                       + "[" * 5000 + "]" * 5000 + "}"), {}, 400),
    "huge body": ("chat", raw(json.dumps(chat(messages=[{"role": "user", "content": "x" * 2_000_000}]))), {}, 413),
    "wrong content type": ("chat", raw(json.dumps(GOOD)), {"Content-Type": "text/plain"}, 415),
    "form content type": ("chat", raw("model=demo-chat"), {"Content-Type": "application/x-www-form-urlencoded"},
                          415),
    "no messages": ("chat", chat(messages=...), {}, 400),
    "empty messages": ("chat", chat(messages=[]), {}, 400),
    "messages not a list": ("chat", chat(messages="hi"), {}, 400),
    "unknown role": ("chat", chat(messages=[{"role": "root", "content": "hi"}]), {}, 400),
    "user message without content": ("chat", chat(messages=[{"role": "user"}]), {}, 400),
    "tool message without tool_call_id": ("chat", chat(messages=[{"role": "tool", "content": "x"}]), {}, 400),
    "content a number": ("chat", chat(messages=[{"role": "user", "content": 42}]), {}, 400),
    "model missing": ("chat", chat(model=...), {}, 400),
    "model empty": ("chat", chat(model=""), {}, 400),
    "model 10 KB": ("chat", chat(model="m" * 10_000), {}, 400),
    "model SQL fragment": ("chat", chat(model=SQL), {}, 404),
    "model unicode": ("chat", chat(model="模型-ü"), {}, 404),
    "model null": ("chat", chat(model=None), {}, 400),
    "stream not a bool": ("chat", chat(stream="yes please"), {}, 400),
    "user 1 KB": ("chat", chat(user="u" * 1000), {}, 400),
    "Idempotency-Key with spaces": ("chat", GOOD, {"Idempotency-Key": "two words"}, 400),
    "Idempotency-Key 200 chars": ("chat", GOOD, {"Idempotency-Key": "k" * 200}, 400),
    "X-Request-Id SQL fragment": ("chat", GOOD, {"X-Request-Id": SQL}, 400),
    "OpenAI-Organization SQL fragment": ("chat", GOOD, {"OpenAI-Organization": SQL}, 400),
    "OpenAI-Organization unknown": ("chat", GOOD, {"OpenAI-Organization": "no-such-org-x"}, 404),
    "image n zero": ("images", {"model": "demo-image", "prompt": "p", "n": 0}, {}, 400),
    "image n 2^63": ("images", {"model": "demo-image", "prompt": "p", "n": 2**63}, {}, 400),
    "image empty prompt": ("images", {"model": "demo-image", "prompt": ""}, {}, 400),
    "image prompt 40 KB": ("images", {"model": "demo-image", "prompt": "p" * 40_000}, {}, 400),
    "image bad response_format": ("images", {"model": "demo-image", "prompt": "p", "response_format": "gif"}, {},
                                  400),
    "image with a chat model": ("images", {"model": "demo-chat", "prompt": "p"}, {}, 400),
    "image NaN n": ("images", raw('{"model": "demo-image", "prompt": "p", "n": NaN}'), {}, 400),
    "chat with an image model": ("chat", chat(model="demo-image"), {}, 400),
    "unknown path": ("/api/v1/llm/engines", GOOD, {}, 404),
    "usage bad group_by": ("GET /api/v1/usage?group_by=org", None, {}, 400),
    "usage limit 2^63": ("GET /api/v1/usage?limit=9223372036854775808", None, {}, 400),
    "usage bad time": ("GET /api/v1/usage?start=yesterday", None, {}, 400),
    "usage time before year 1 in UTC": ("GET /api/v1/usage?end=0001-01-01T12:03:12.36%2B12:17", None, {}, 400),
    "usage time after 9999 in UTC": ("GET /api/v1/usage?start=9999-12-31T23:00:00-05:00", None, {}, 400),
    "usage SQL in group_by": ("GET /api/v1/usage?group_by=model;DROP%20TABLE%20users", None, {}, 400),
    "balance with SQL org": ("GET /api/v1/credits/balance", None, {"OpenAI-Organization": SQL}, 400),
    "bearer of 10 KB": ("chat", GOOD, {"Authorization": "Bearer " + "k" * 10_000}, 401),
    "basic auth": ("chat", GOOD, {"Authorization": "Basic dXNlcjpwYXNz"}, 401),
}



def upload(fields: dict[str, str] | None = None, file: tuple[str, bytes, str] | None = ("a.wav", wav(1), "audio/wav"),
           **changes: str) -> tuple[bytes, dict[str, str]]:
    """A transcription request as multipart/form-data: (body, the Content-Type header)."""
    form = {"model": "up-transcribe", **(fields or {}), **changes}
    body, content_type = multipart({k: v for k, v in form.items() if v is not None},
                                   {"file": file} if file is not None else None)
    return body, {"Content-Type": content_type}


def transcription(status: int, fields: dict[str, str] | None = None, file: tuple[str, bytes, str] | None = (
        "a.wav", wav(1), "audio/wav"), **changes: str) -> tuple[str, bytes, dict[str, str], int]:
    body, headers = upload(fields, file, **changes)
    return ("transcriptions", body, headers, status)


WAV = wav(1)
EMBED = {"model": "up-embed", "input": "hello"}
MODERATE = {"model": "up-moderate", "input": "hello"}
CASES.update({
    # embeddings
    "embeddings input missing": ("embeddings", {"model": "up-embed"}, {}, 400),
    "embeddings empty string": ("embeddings", {**EMBED, "input": ""}, {}, 400),
    "embeddings empty list": ("embeddings", {**EMBED, "input": []}, {}, 400),
    "embeddings list with an empty string": ("embeddings", {**EMBED, "input": ["a", ""]}, {}, 400),
    "embeddings empty token array": ("embeddings", {**EMBED, "input": [[]]}, {}, 400),
    "embeddings negative token id": ("embeddings", {**EMBED, "input": [1, -5]}, {}, 400),
    "embeddings token id 2^63": ("embeddings", {**EMBED, "input": [2**63]}, {}, 400),
    "embeddings token ids as floats": ("embeddings", {**EMBED, "input": [1.0, 2.5]}, {}, 400),
    "embeddings token ids as booleans": ("embeddings", {**EMBED, "input": [True, False]}, {}, 400),
    "embeddings strings mixed with tokens": ("embeddings", {**EMBED, "input": ["a", 1]}, {}, 400),
    "embeddings input an object": ("embeddings", {**EMBED, "input": {"text": "a"}}, {}, 400),
    "embeddings 2049 inputs": ("embeddings", {**EMBED, "input": ["a"] * 2049}, {}, 400),
    "embeddings huge token array": ("embeddings", {**EMBED, "input": [1] * 300_001}, {}, 400),
    "embeddings token arrays over the request's tokens": ("embeddings", {**EMBED, "input": [[1] * 8000] * 40}, {},
                                                           400),
    "embeddings one input over the model's tokens": ("embeddings", {**EMBED, "input": ["word " * 9000]}, {}, 400),
    "embeddings dimensions zero": ("embeddings", {**EMBED, "dimensions": 0}, {}, 400),
    "embeddings dimensions the model does not take": ("embeddings", {**EMBED, "dimensions": 8}, {}, 400),
    "embeddings bad encoding_format": ("embeddings", {**EMBED, "encoding_format": "int8"}, {}, 400),
    "embeddings user NUL": ("embeddings", {**EMBED, "user": "a\u0000b"}, {}, 400),
    "embeddings with a chat model": ("embeddings", {**EMBED, "model": "up-chat"}, {}, 400),
    "embeddings unknown model": ("embeddings", {**EMBED, "model": "no-such-embedder"}, {}, 404),
    "embeddings NaN dimensions": ("embeddings", raw('{"model": "up-embed", "input": "a", "dimensions": NaN}'), {}, 400),
    "embeddings form content type": ("embeddings", raw("model=up-embed&input=a"),
                                     {"Content-Type": "application/x-www-form-urlencoded"}, 415),
    "embeddings huge body": ("embeddings", {**EMBED, "input": "x" * 2_000_000}, {}, 413),
    "chat with an embedding model": ("chat", chat(model="up-embed"), {}, 400),
    "images with a transcription model": ("images", {"model": "up-transcribe", "prompt": "p"}, {}, 400),
    # moderations
    "moderations input missing": ("moderations", {"model": "up-moderate"}, {}, 400),
    "moderations empty input": ("moderations", {**MODERATE, "input": ""}, {}, 400),
    "moderations empty list": ("moderations", {**MODERATE, "input": []}, {}, 400),
    "moderations input a number": ("moderations", {**MODERATE, "input": 42}, {}, 400),
    "moderations 129 inputs": ("moderations", {**MODERATE, "input": ["a"] * 129}, {}, 400),
    "moderations unknown part type": ("moderations", {**MODERATE, "input": [{"type": "audio", "audio": "x"}]}, {}, 400),
    "moderations over the model's tokens": ("moderations", {**MODERATE, "input": "word " * 9000}, {}, 400),
    "moderations with an embedding model": ("moderations", {**MODERATE, "model": "up-embed"}, {}, 400),
    "moderations wrong content type": ("moderations", raw(json.dumps(MODERATE)), {"Content-Type": "text/plain"},
                                       415),
    "chat with a moderation model": ("chat", chat(model="up-moderate"), {}, 400),
    # audio transcriptions (multipart/form-data)
    "transcription as JSON": ("transcriptions", {"model": "up-transcribe", "file": "UklGRg=="}, {}, 415),
    "transcription form-urlencoded": ("transcriptions", raw("model=up-transcribe&file=x"),
                                      {"Content-Type": "application/x-www-form-urlencoded"}, 415),
    "transcription upload over 25 MiB": transcription(413, file=("big.wav", WAV + b"\0" * (25 * 1024 * 1024),
                                                                "audio/wav")),
    "transcription without a file": transcription(400, file=None),
    "transcription file as a text field": transcription(400, {"file": "not a file"}, file=None),
    "transcription empty file": transcription(400, file=("a.wav", b"", "audio/wav")),
    "transcription of an MP3": transcription(400, file=("a.mp3", b"ID3\x04\x00\x00" + b"\xff\xfb" * 500,
                                                        "audio/mpeg")),
    "transcription of a text file named .wav": transcription(400, file=("a.wav", b"hello " * 100, "audio/wav")),
    "transcription WAV header cut short": transcription(400, file=("a.wav", WAV[:30], "audio/wav")),
    "transcription WAV with no frames": transcription(400, file=("a.wav", wav(0), "audio/wav")),
    "transcription WAV with a second data chunk": transcription(400, file=("a.wav", two_data_chunks(1, 60),
                                                                           "audio/wav")),
    "transcription float WAV": transcription(400, file=("a.wav", WAV[:20] + b"\x03\x00" + WAV[22:], "audio/wav")),
    "transcription model missing": transcription(400, model=None),
    "transcription with a chat model": transcription(400, model="up-chat"),
    "transcription unknown model": transcription(404, model="no-such-transcriber"),
    "transcription bad response_format": transcription(400, response_format="mp4"),
    "transcription temperature NaN": transcription(400, temperature="nan"),
    "transcription temperature 2": transcription(400, temperature="2"),
    "transcription language SQL": transcription(400, language=SQL),
    "transcription prompt NUL": transcription(400, prompt="a\x00b"),
    "transcription user control characters": transcription(400, user="\x1b[2J"),
    "transcription bad timestamp granularity": transcription(400, {"timestamp_granularities[]": "char"}),
    "transcription timestamps without verbose_json": transcription(400, {"timestamp_granularities[]": "word"}),
    "embeddings with a transcription model": ("embeddings", {**EMBED, "model": "up-transcribe"}, {}, 400),
    "embeddings X-Max-Cost below the worst case": ("embeddings", {**EMBED, "input": "word " * 1000},
                                                   {"X-Max-Cost": "0.001"}, 402),
    "transcription X-Max-Cost below the worst case": (lambda path, body, headers, status: (
        path, body, {**headers, "X-Max-Cost": "0.001"}, status))(*transcription(402)),
})

PATHS = {"chat": "/api/v1/llm/chat/completions", "images": "/api/v1/llm/images/generations",
         "embeddings": "/api/v1/llm/embeddings", "moderations": "/api/v1/llm/moderations",
         "transcriptions": "/api/v1/llm/audio/transcriptions"}

# ---- the Responses API (/responses): its own items, and no stored state --------------------------
PATHS["responses"] = "/api/v1/llm/responses"
RESPOND = {"model": "up-chat", "input": "hi"}


def respond(**changes):
    body = {**RESPOND, **changes}
    return "responses", {k: v for k, v in body.items() if v is not ...}, {}, 400


def respond_items(*items):
    return respond(input=list(items))


CASES.update({
    "responses input missing": respond(input=...),
    "responses empty input": respond(input=""),
    "responses empty item list": respond(input=[]),
    "responses input a number": respond(input=42),
    "responses 2049 items": respond_items(*[{"role": "user", "content": "a"}] * 2049),
    "responses oversized input": ("responses", {**RESPOND, "input": "x" * 2_000_000}, {}, 413),
    "responses max_output_tokens zero": respond(max_output_tokens=0),
    "responses max_output_tokens negative": respond(max_output_tokens=-1),
    "responses max_output_tokens 2^63": respond(max_output_tokens=2**63),
    "responses max_output_tokens as string": respond(max_output_tokens="ten"),
    "responses max_output_tokens NaN": ("responses", raw('{"model": "up-chat", "input": "hi", '
                                                         '"max_output_tokens": NaN}'), {}, 400),
    "responses previous_response_id": respond(previous_response_id="resp_0123456789abcdef"),
    "responses store true": respond(store=True),
    "responses background true": respond(background=True),
    "responses conversation": respond(conversation={"id": "conv_123"}),
    "responses stored prompt template": respond(prompt={"id": "pmpt_123"}),
    "responses item_reference item": respond_items({"type": "item_reference", "id": "msg_123"}),
    "responses reasoning item": respond_items({"type": "reasoning", "id": "rs_1", "summary": []}),
    "responses unknown item type": respond_items({"type": "x'; DROP TABLE users; --", "content": "hi"}),
    "responses input_file part": respond_items({"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}),
    "responses image by file_id": respond_items({"role": "user", "content": [{"type": "input_image",
                                                                               "file_id": "file-1"}]}),
    "responses image in an assistant message": respond_items({"role": "assistant", "content": [
        {"type": "input_image", "image_url": "https://images.invalid/a.png"}]}),
    "responses unknown role": respond_items({"role": "root", "content": "hi"}),
    "responses function_call_output without call_id": respond_items({"type": "function_call_output", "output": "x"}),
    "responses function_call with a bad name": respond_items({"type": "function_call", "call_id": "c1",
                                                              "name": "a b\u0000", "arguments": "{}"}),
    "responses built-in tool": respond(tools=[{"type": "web_search"}]),
    "responses function tool without a name": respond(tools=[{"type": "function"}]),
    "responses tool_choice a built-in tool": respond(tool_choice={"type": "file_search"}),
    "responses json_schema without a schema": respond(text={"format": {"type": "json_schema", "name": "x"}}),
    "responses user NUL": respond(user="a\u0000b"),
    "responses stream not a bool": respond(stream="yes please"),
    "responses with an image model": respond(model="demo-image"),
    "responses with an embedding model": respond(model="up-embed"),
    "responses unknown model": ("responses", {**RESPOND, "model": "no-such-model"}, {}, 404),
})


def test_the_rest_catalogue_is_large_enough():
    assert len(CASES) >= 50


@pytest.mark.parametrize("name", list(CASES))
async def test_bad_rest_input_gets_its_status_and_writes_nothing(name, inference, member, db, upstream):
    target, body, extra, expected = CASES[name]
    headers = {"Authorization": f"Bearer {member.key}", "Content-Type": "application/json", **extra}
    before, calls_before = await row_counts(db), sum(upstream.calls.values())
    if target.startswith("GET "):
        response = httpx.get(inference.url + target[4:], headers=headers, timeout=30)
    else:
        url = inference.url + PATHS.get(target, target)
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = httpx.post(url, content=content, headers=headers, timeout=30)
    assert response.status_code == expected, f"{name}: {response.status_code} {response.text[:300]}"
    error = response.json()["error"]
    assert error["message"] and error["type"]
    assert await row_counts(db) == before, "a rejected request wrote to the database"
    assert sum(upstream.calls.values()) == calls_before, "a rejected request reached a model"
