"""How long an uploaded audio file plays, read from the file itself before anything is held.

A transcription is priced per second of audio (the catalogue's `input_cost_per_second`), so its worst
case needs the duration before the call. It is read with the standard library only: WAV (RIFF/WAVE,
integer PCM) through `wave`. No other format's duration can be read without a decoder this project does
not ship, so other formats are refused (400, naming the supported ones) rather than guessed.

The duration is an upper bound: the frames the header declares, or the frames the file's bytes after
the smallest header could hold if that is more (a data chunk that understates its size cannot shrink
the hold), in whole seconds rounded up.
"""

from __future__ import annotations

import io
import math
import wave
from dataclasses import dataclass
from decimal import Decimal

SUPPORTED_FORMATS = "WAV (PCM)"
WAV_HEADER_BYTES = 44  # the smallest header a PCM WAV has before its first frame


class UnreadableAudio(ValueError):
    """The file's duration cannot be determined: refused before anything is held."""


@dataclass(frozen=True)
class AudioFile:
    """What the service knows about an upload before the call."""

    duration: Decimal  # seconds, as the header says (the charge when the provider reports none)
    worst_seconds: int  # whole seconds the hold pays for: at least the duration, at least 1
    format: str


def wav_duration(data: bytes) -> AudioFile:
    """The duration of a WAV file; UnreadableAudio when it is not a PCM WAV `wave` can read."""
    try:
        with wave.open(io.BytesIO(data), "rb") as reader:
            rate, frames = reader.getframerate(), reader.getnframes()
            frame_bytes = reader.getnchannels() * reader.getsampwidth()
    except (wave.Error, EOFError, ValueError) as exc:  # ValueError: Python 3.12's WAVE_FORMAT_EXTENSIBLE
        raise UnreadableAudio(f"not a WAV file this service can read ({exc})") from None
    if rate <= 0 or frame_bytes <= 0:
        raise UnreadableAudio("the WAV header declares no sample rate or sample size")
    if frames == 0:
        raise UnreadableAudio("the WAV file has no audio frames")
    # every byte after the smallest header (RIFF, fmt and data chunk headers: 44 bytes), had it been audio
    most_frames = max(frames, (len(data) - WAV_HEADER_BYTES) // frame_bytes)
    return AudioFile(Decimal(frames) / Decimal(rate), max(math.ceil(Decimal(most_frames) / Decimal(rate)), 1),
                     "wav")


def read_duration(data: bytes) -> AudioFile:
    """The duration of an upload, by its bytes (never by its name or declared type)."""
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return wav_duration(data)
    raise UnreadableAudio(f"the duration of this audio cannot be determined; supported formats: {SUPPORTED_FORMATS}")
