"""How long an uploaded audio file plays, read from the file itself before anything is held.

A transcription is priced per second of audio (the catalogue's `input_cost_per_second`), so its worst
case needs the duration before the call. It is read with the standard library only: WAV (RIFF/WAVE,
integer PCM) through `wave`. No other format's duration can be read without a decoder this project does
not ship, so other formats are refused (400, naming the supported ones) rather than guessed.

The header's sizes are the client's to write, so none of them is trusted upward or downward:

* the hold, and the charge when the provider reports no duration, are the byte-based bound: every
  byte from the start of the data chunk to the end of the file, had it all been audio (what a decoder
  could possibly play, whatever the data chunk declares: understated, or 0xFFFFFFFF as a writer to a
  pipe leaves it);
* the file's `duration` (logged, never charged) is the frames the data chunk declares, but no more than
  the file holds;
* a second data chunk (which decoders such as ffmpeg play after the first) is refused, and so is a file
  of more than MAX_CHUNKS chunks (the walk that finds them stays short).
"""

from __future__ import annotations

import io
import math
import wave
from dataclasses import dataclass
from decimal import Decimal

SUPPORTED_FORMATS = "WAV (PCM)"
RIFF_HEADER_BYTES = 12  # "RIFF", its size, "WAVE"
CHUNK_HEADER_BYTES = 8  # a chunk's id and its little-endian size
MAX_CHUNKS = 10_000  # a WAV has a handful; walking 25 MiB of 8-byte chunks would hold the event loop for a second


class UnreadableAudio(ValueError):
    """The file's duration cannot be determined: refused before anything is held."""


@dataclass(frozen=True)
class AudioFile:
    """What the service knows about an upload before the call."""

    duration: Decimal  # seconds the header declares, at most what the file holds (logged, never charged)
    most_seconds: Decimal  # seconds every byte after the data chunk's start could play: the charge when the
    # provider reports none
    worst_seconds: int  # whole seconds the hold pays for: most_seconds rounded up, at least 1
    format: str


def _first_data_chunk(data: bytes) -> tuple[int, int]:
    """(offset of the first data chunk's bytes, the size it declares); UnreadableAudio on a second data chunk."""
    first: tuple[int, int] | None = None
    offset, chunks = RIFF_HEADER_BYTES, 0
    while offset + CHUNK_HEADER_BYTES <= len(data):
        chunks += 1
        if chunks > MAX_CHUNKS:
            raise UnreadableAudio(f"the WAV file has more than {MAX_CHUNKS} chunks")
        chunk_id = data[offset:offset + 4]
        size = int.from_bytes(data[offset + 4:offset + CHUNK_HEADER_BYTES], "little")
        if chunk_id == b"data":
            if first is not None:
                raise UnreadableAudio("the WAV file has more than one data chunk; send its audio as one")
            first = (offset + CHUNK_HEADER_BYTES, size)
        offset += CHUNK_HEADER_BYTES + size + (size & 1)  # chunks are padded to an even size
    if first is None:
        raise UnreadableAudio("the WAV file has no data chunk")
    return first


def wav_duration(data: bytes) -> AudioFile:
    """The duration of a WAV file; UnreadableAudio when it is not a PCM WAV `wave` can read."""
    start, declared_size = _first_data_chunk(data)  # first: it bounds the chunks `wave` walks too
    try:
        with wave.open(io.BytesIO(data), "rb") as reader:
            rate = reader.getframerate()
            frame_bytes = reader.getnchannels() * reader.getsampwidth()
    except (wave.Error, EOFError, ValueError) as exc:  # ValueError: Python 3.12's WAVE_FORMAT_EXTENSIBLE
        raise UnreadableAudio(f"not a WAV file this service can read ({exc})") from None
    if rate <= 0 or frame_bytes <= 0:
        raise UnreadableAudio("the WAV header declares no sample rate or sample size")
    in_file = max(len(data) - start, 0) // frame_bytes  # every byte from the data chunk on, had it been audio
    frames = min(declared_size // frame_bytes, in_file)
    if frames == 0:
        raise UnreadableAudio("the WAV file has no audio frames")
    most_seconds = Decimal(in_file) / Decimal(rate)
    return AudioFile(Decimal(frames) / Decimal(rate), most_seconds, max(math.ceil(most_seconds), 1), "wav")


def read_duration(data: bytes) -> AudioFile:
    """The duration of an upload, by its bytes (never by its name or declared type)."""
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return wav_duration(data)
    raise UnreadableAudio(f"the duration of this audio cannot be determined; supported formats: {SUPPORTED_FORMATS}")
