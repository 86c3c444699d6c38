"""Support for the embeddings, transcription and moderation tests: WAV files made here (no fixtures on disk),
multipart bodies as a client sends them, and the prices of the test catalogue read back from it."""

from __future__ import annotations

import io
import math
import wave
from decimal import Decimal
from pathlib import Path

import httpx
import yaml

MC_PER_USD = Decimal(100) * 1000  # the service's default rate: 100 credits per USD, 1,000 millicredits each


def wav(seconds: float, rate: int = 8000, channels: int = 1) -> bytes:
    """A silent 16-bit PCM WAV of `seconds` (rounded to whole frames)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(b"\0\0" * channels * round(seconds * rate))
    return buffer.getvalue()


def streamed_wav(seconds: float, rate: int = 8000) -> bytes:
    """A WAV as a writer to a pipe leaves it: RIFF and data sizes 0xFFFFFFFF (unknown), `seconds` of audio."""
    data = wav(seconds, rate)
    start = data.index(b"data")
    return data[:4] + b"\xff" * 4 + data[8:start + 4] + b"\xff" * 4 + data[start + 8:]


def two_data_chunks(first_frames: int, then_seconds: float, rate: int = 8000) -> bytes:
    """A WAV whose first data chunk declares (and holds) `first_frames`, followed by a second data chunk of
    `then_seconds` of audio: decoders such as ffmpeg play both."""
    data = wav(first_frames / rate, rate)
    second = b"\0\0" * round(then_seconds * rate)
    return data + b"data" + len(second).to_bytes(4, "little") + second


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes, str]] | None = None) -> tuple[bytes, str]:
    """(body, Content-Type) of a multipart/form-data request, as the SDKs send it (also with no file)."""
    if files:
        request = httpx.Request("POST", "http://encoder.invalid/", data=fields, files=files)
        return request.read(), request.headers["Content-Type"]
    boundary = "test-boundary-5f0c2a"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields.items()]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def price(models_file: Path, model: str, field: str) -> Decimal:
    """A price of the catalogue the service was started with, exactly as written there."""
    for entry in yaml.safe_load(models_file.read_text())["model_list"]:
        if entry["model_name"] == model:
            return Decimal(str(entry["model_info"][field]))
    raise KeyError(model)


def millicredits(usd: Decimal) -> int:
    """A provider cost in USD as the service charges it: rounded up to the millicredit."""
    return math.ceil(usd * MC_PER_USD)
