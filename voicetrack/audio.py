"""Audio constants shared by the recorder, the transcoder and the tests.

Discord voice is Opus at 48 kHz, stereo, 20 ms frames (Discord developer docs, "Voice
Connections: Encrypting and Sending Voice"). Everything in Voicetrack counts time in
milliseconds of session time and audio in samples per channel at 48 kHz.
"""

from __future__ import annotations

SAMPLE_RATE = 48_000
"""Samples per second per channel (Hz)."""

CHANNELS = 2
"""Discord sends and Voicetrack stores stereo."""

FRAME_MS = 20
"""Duration of one Discord Opus frame in ms."""

FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000
"""Samples per channel in one 20 ms frame: 960."""

SAMPLES_PER_MS = SAMPLE_RATE // 1000
"""48 samples per channel per ms."""

PCM_BYTES_PER_SAMPLE = 2 * CHANNELS
"""Bytes of one interleaved s16le stereo sample frame: 4."""

OPUS_SILENCE_FRAME = b"\xf8\xff\xfe"
"""The 20 ms Opus frame Discord sends (and we insert) for silence: TOC 0xF8 = CELT-only
fullband 20 ms, stereo, one frame, followed by an empty frame (RFC 6716 §3.1)."""

RAW_FORMAT_OGG_OPUS = "ogg-opus"
RAW_FORMAT_PCM = "pcm-s16le"
RAW_FORMATS = (RAW_FORMAT_OGG_OPUS, RAW_FORMAT_PCM)
RAW_EXTENSIONS = {RAW_FORMAT_OGG_OPUS: "opus", RAW_FORMAT_PCM: "pcm"}
"""Raw chunk formats and their object-key extensions (DESIGN.md, "Raw chunk format")."""


def ms_to_samples(ms: int) -> int:
    """Samples per channel at 48 kHz in `ms` milliseconds."""
    return ms * SAMPLES_PER_MS


def samples_to_ms(samples: int) -> int:
    """Whole milliseconds in `samples` samples per channel at 48 kHz (rounded down)."""
    return samples // SAMPLES_PER_MS
