"""Waveform data for the web page: audiowaveform peaks JSON (the format Peaks.js reads) and a
small overview PNG, both computed while the final tracks stream past.

Peaks format (BBC audiowaveform, "Data format" doc; Peaks.js `waveform.dataUri.json`):
`{"version": 2, "channels": 1, "sample_rate": 48000, "samples_per_pixel": N, "bits": 8,
"length": pixels, "data": [min0, max0, min1, max1, ...]}` with 8-bit values (-128..127), both
stereo channels folded into one, as audiowaveform does by default.
"""

from __future__ import annotations

import subprocess
from typing import Any

import numpy as np

from voicetrack.audio import SAMPLE_RATE
from voicetrack.errors import TemporaryFailure

SAMPLES_PER_PIXEL = 480
"""10 ms of audio per peaks pixel (below Peaks.js's smallest default zoom level, 512)."""
OVERVIEW_SIZE = (1200, 200)
"""Width and height of the overview PNG in pixels."""


class PeaksBuilder:
    """Accumulates min/max per `samples_per_pixel` samples of int16 blocks (n, `channels`)
    of any length (a partial pixel carries over to the next block; `finish()` closes it)."""

    def __init__(self, samples_per_pixel: int = SAMPLES_PER_PIXEL, channels: int = 2) -> None:
        self.spp = samples_per_pixel
        self.channels = channels
        self._carry = np.empty((0, channels), dtype=np.int16)
        self._mins: list[np.ndarray] = []
        self._maxs: list[np.ndarray] = []

    def add(self, block: np.ndarray) -> None:
        """Add int16 samples of shape (n, channels)."""
        if self._carry.shape[0]:
            block = np.concatenate([self._carry, block])
        whole = block.shape[0] // self.spp * self.spp
        if whole:
            px = block[:whole].reshape(-1, self.spp * block.shape[1])
            self._mins.append((px.min(axis=1) >> 8).astype(np.int8))
            self._maxs.append((px.max(axis=1) >> 8).astype(np.int8))
        self._carry = block[whole:].copy()

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """(mins, maxs) per pixel as int8 arrays, the last partial pixel included."""
        if self._carry.shape[0]:
            self._mins.append(np.array([self._carry.min() >> 8], dtype=np.int8))
            self._maxs.append(np.array([self._carry.max() >> 8], dtype=np.int8))
            self._carry = np.empty((0, self.channels), dtype=np.int16)
        empty = np.empty(0, dtype=np.int8)
        mins = np.concatenate(self._mins) if self._mins else empty
        maxs = np.concatenate(self._maxs) if self._maxs else empty
        return mins, maxs

    def to_json(self) -> dict[str, Any]:
        """The audiowaveform version-2 JSON document (see the module docstring)."""
        return peaks_json(*self.finish(), self.spp)


def peaks_json(mins: np.ndarray, maxs: np.ndarray, samples_per_pixel: int = SAMPLES_PER_PIXEL
               ) -> dict[str, Any]:
    """The audiowaveform version-2 JSON document (see the module docstring) of per-pixel
    int8 minima and maxima (equal lengths)."""
    data = np.empty(mins.size * 2, dtype=np.int64)
    data[0::2] = mins
    data[1::2] = maxs
    return {"version": 2, "channels": 1, "sample_rate": SAMPLE_RATE,
            "samples_per_pixel": samples_per_pixel, "bits": 8, "length": int(mins.size),
            "data": data.tolist()}


def overview_png(mins: np.ndarray, maxs: np.ndarray, size: tuple[int, int] = OVERVIEW_SIZE
                 ) -> bytes:
    """A PNG (width × height) of the waveform from per-pixel peaks: dark bars on white,
    encoded by ffmpeg's PNG encoder. Raises TemporaryFailure if ffmpeg fails."""
    width, height = size
    image = np.full((height, width, 3), 255, dtype=np.uint8)
    if mins.size:
        edges = np.linspace(0, mins.size, width + 1).astype(np.int64)
        edges[1:] = np.maximum(edges[1:], edges[:-1] + 1)
        edges = np.minimum(edges, mins.size)
        mid = height // 2
        scale = (height / 2 - 1) / 128.0
        for x in range(width):
            lo, hi = edges[x], max(edges[x + 1], edges[x] + 1)
            if lo >= mins.size:
                break
            top = int(mid - int(maxs[lo:hi].max()) * scale)
            bottom = int(mid - int(mins[lo:hi].min()) * scale)
            image[max(top, 0): min(bottom, height - 1) + 1, x] = (40, 90, 160)
    proc = subprocess.run(
        ["ffmpeg", "-hide_banner", "-v", "error", "-nostdin", "-f", "rawvideo",
         "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-i", "pipe:0", "-frames:v", "1",
         "-c:v", "png", "-fflags", "+bitexact", "-flags", "+bitexact", "-f", "image2pipe",
         "pipe:1"],
        input=image.tobytes(), capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise TemporaryFailure(f"ffmpeg (overview png) exited {proc.returncode}: "
                               f"{proc.stderr.decode(errors='replace').strip()[-200:]}")
    return proc.stdout
