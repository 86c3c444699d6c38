"""The duration of an upload, read before anything is held (inference_service/audio.py): an upper bound."""

from __future__ import annotations

from decimal import Decimal

import pytest
from media_support import streamed_wav, two_data_chunks, wav

from inference_service.audio import UnreadableAudio, read_duration


@pytest.mark.parametrize("seconds, rate, channels, worst", [(2.5, 8000, 1, 3), (2, 8000, 1, 2), (0.01, 16000, 2, 1),
                                                            (1.5, 44100, 2, 2)])
def test_a_wav_plays_for_its_frames_and_the_hold_pays_whole_seconds(seconds, rate, channels, worst):
    audio = read_duration(wav(seconds, rate, channels))
    assert audio.duration == Decimal(str(seconds)) and audio.worst_seconds == worst and audio.format == "wav"


def test_bytes_past_an_understated_data_chunk_count_toward_the_hold_and_the_charge():
    audio = read_duration(wav(1) + b"\0" * (2 * 8000 * 2))  # 2 s of samples the header does not declare
    assert audio.duration == 1 and audio.worst_seconds == 3
    assert audio.most_seconds == 3, "what the provider could decode is charged when it reports nothing"


def test_a_streamed_header_larger_than_the_file_counts_only_what_the_file_holds():
    """Data size 0xFFFFFFFF (as written to a pipe): 2 s of audio, not 37 hours."""
    audio = read_duration(streamed_wav(2))
    assert (audio.duration, audio.most_seconds, audio.worst_seconds) == (2, 2, 2)


def test_a_file_of_countless_chunks_is_refused_without_walking_them_all():
    with pytest.raises(UnreadableAudio, match="more than 10000 chunks"):
        read_duration(wav(1) + b"JUNK\0\0\0\0" * 10_001)


def test_a_second_data_chunk_is_refused():
    """The first chunk declares 1 frame, the second 60 s that a decoder plays: refused before anything is held."""
    with pytest.raises(UnreadableAudio, match="more than one data chunk"):
        read_duration(two_data_chunks(1, 60))


@pytest.mark.parametrize("data", [b"ID3\x04\x00\x00" + b"\xff\xfb" * 400, b"OggS" + b"\0" * 400, b"fLaC" + b"\0" * 99,
                                  b"RIFF\x00\x00\x00\x00WAVE", wav(1)[:40], wav(0), b""],
                         ids=["mp3", "ogg", "flac", "riff-only", "cut-header", "no-frames", "empty"])
def test_a_file_whose_duration_cannot_be_read_is_refused(data):
    with pytest.raises(UnreadableAudio):
        read_duration(data)
    if not data.startswith(b"RIFF"):
        with pytest.raises(UnreadableAudio, match="supported formats: WAV"):
            read_duration(data)
