"""The speech timeline: when each speaker spoke, from the level of their decoded audio.

A 20 ms slot (960 samples at 48 kHz) is voiced when its RMS over all channels exceeds
THRESHOLD_DBFS. A slot no packet arrived for holds the Opus silence frame, which decodes
to digital silence, so packet absence is never voice. Raw runs of voiced slots are found
per block (`voiced_runs`), joined across blocks and chunks (`join_runs`), then smoothed
(`smooth`): gaps shorter than MERGE_GAP_MS are closed, runs shorter than MIN_SPEECH_MS
dropped (a click or a cough), and each run is held HANGOVER_MS after its last voiced slot.
All times are ms of output time.
"""

from __future__ import annotations

import numpy as np

from voicetrack.audio import FRAME_MS, FRAME_SAMPLES

THRESHOLD_DBFS = -45.0
"""RMS level (dB relative to full scale, 32767) above which a slot is voiced."""
MERGE_GAP_MS = 300
MIN_SPEECH_MS = 100
HANGOVER_MS = 200
_THRESHOLD = 32767.0 * 10 ** (THRESHOLD_DBFS / 20)

Runs = list[list[int]]
"""`[[start_ms, end_ms], ...]`, sorted, not overlapping."""


def voiced_runs(pcm: np.ndarray, start_ms: int) -> Runs:
    """Runs of voiced slots in int16 samples `pcm` (n, channels) that start at output time
    `start_ms` (a multiple of 20 ms). A trailing partial slot is ignored."""
    slots = pcm.shape[0] // FRAME_SAMPLES
    if slots == 0:
        return []
    frames = pcm[: slots * FRAME_SAMPLES].astype(np.float32).reshape(slots, -1)
    rms = np.sqrt(np.mean(frames * frames, axis=1))
    voiced = np.concatenate([[False], rms > _THRESHOLD, [False]])
    edges = np.flatnonzero(np.diff(voiced.astype(np.int8)))
    return [[start_ms + int(a) * FRAME_MS, start_ms + int(b) * FRAME_MS]
            for a, b in zip(edges[0::2], edges[1::2], strict=True)]


def join_runs(parts: list[Runs]) -> Runs:
    """Concatenate runs of consecutive stretches (in time order), joining runs that touch."""
    out: Runs = []
    for runs in parts:
        for a, b in runs:
            if out and a <= out[-1][1]:
                out[-1][1] = max(out[-1][1], b)
            else:
                out.append([a, b])
    return out


def smooth(runs: Runs, duration_ms: int) -> Runs:
    """Close gaps < MERGE_GAP_MS, drop runs < MIN_SPEECH_MS, add HANGOVER_MS (clamped to
    `duration_ms`)."""
    merged: Runs = []
    for a, b in runs:
        if merged and a - merged[-1][1] < MERGE_GAP_MS:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    out: Runs = []
    for a, b in merged:
        if b - a < MIN_SPEECH_MS:
            continue
        end = min(b + HANGOVER_MS, duration_ms)
        if out and a <= out[-1][1]:
            out[-1][1] = end
        else:
            out.append([a, end])
    return out


class SpeechDetector:
    """Streams one speaker's blocks (int16, (n, channels), each a whole number of slots
    except possibly the last) and collects raw voiced runs in output time."""

    def __init__(self) -> None:
        self.at_ms = 0
        self.parts: list[Runs] = []

    def add(self, block: np.ndarray) -> None:
        self.parts.append(voiced_runs(block, self.at_ms))
        self.at_ms += block.shape[0] // FRAME_SAMPLES * FRAME_MS

    def runs(self) -> Runs:
        return join_runs(self.parts)
