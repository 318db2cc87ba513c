"""Audio constants shared by the recorder, the transcoder and the tests.

Discord voice is Opus at 48 kHz, stereo, 20 ms frames (Discord developer docs, "Voice
Connections: Encrypting and Sending Voice"). Everything in Voicetrack counts time in
milliseconds of session time and audio in samples per channel at 48 kHz.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

SAMPLE_RATE = 48_000
"""Samples per second per channel (Hz)."""

CHANNELS = 2
"""Discord's Opus streams are stereo, and raw chunks store stereo. A Discord client codes
its microphone as mono, though (the TOC's s bit, see `opus_channels`): a speaker whose
packets are all mono-coded gets mono outputs, at no loss."""

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
fullband 20 ms, mono (s bit clear), one frame (code 0), then the frame's bytes
(RFC 6716 §3.1)."""

Channels = Literal[1, 2]
"""Channel count of a track's audio: 1 (mono-coded) or 2."""

OPUS_TOC_STEREO = 0x04
"""The s bit of an Opus packet's TOC byte: set when the packet is coded in stereo
(RFC 6716 §3.1, "s: stereo flag")."""

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


def opus_channels(packets: Iterable[bytes]) -> Channels:
    """Channels that carry distinct audio in a run of Opus packets: 1 when no packet is
    stereo-coded (every TOC byte has the s bit clear, RFC 6716 §3.1; empty packets carry no
    TOC and are skipped), else 2.

    A mono libopus decoder returns exactly the left channel a stereo one gives for such
    packets; the right one equals it too except in the packet where the codec switches
    mode (SILK or hybrid to CELT), where the stereo decoder's transition smoothing differs
    by up to 0.6 % of the peak (measured with libopus 1.3). A speaker whose packets are all
    mono-coded sent mono audio: decoding and encoding it as mono loses nothing it sent."""
    return 2 if any(p and p[0] & OPUS_TOC_STEREO for p in packets) else 1
