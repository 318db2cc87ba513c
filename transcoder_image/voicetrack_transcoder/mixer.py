"""The mixed track: the speakers' samples summed, then a look-ahead limiter so the sum never
clips.

The limiter works on 10 ms pixels of 480 samples. Each pixel needs gain
`r = min(1, threshold / peak)`; the applied gain `g` follows `r` down at once and recovers
by at most `release_per_pixel` per pixel (`g[i] = min(r[i], g[i-1] + release)`, computed as a
running minimum). Inside pixel i the gain ramps linearly between the boundary gains
`min(g[i-1], g[i])` and `min(g[i], g[i+1])`, both ≤ g[i] ≤ r[i], so every output sample stays
within ±threshold and no gain step is sudden. Looking one pixel ahead costs 10 ms of
internal delay, which `process()`/`flush()` absorb: the output has exactly as many samples as
the input.
"""

from __future__ import annotations

import numpy as np

PIXEL = 480
THRESHOLD = 0.97 * 32767
RELEASE_PER_PIXEL = 0.01
"""Gain recovered per 10 ms: from half gain back to unity in 0.5 s."""


def mix_sum(blocks: list[np.ndarray], channels: int = 2) -> np.ndarray:
    """Sum int16 blocks of n samples each into int32 (n, `channels`), no wrap-around. A
    mono block (n, 1) counts in every channel (its sound is centred)."""
    total = np.zeros((blocks[0].shape[0], channels), dtype=np.int32)
    for block in blocks:
        total += block
    return total


class Limiter:
    """Streams int32 sums (n, `channels`) into int16 that never exceeds `threshold`.

    `process(x)` returns the samples it can finish (it holds back up to two pixels);
    `flush()` returns the rest. Across all calls, output samples = input samples.
    """

    def __init__(self, threshold: float = THRESHOLD,
                 release_per_pixel: float = RELEASE_PER_PIXEL, channels: int = 2) -> None:
        self.threshold = threshold
        self.release = release_per_pixel
        self.channels = channels
        self._held = np.empty((0, channels), dtype=np.int32)
        self._g_before = 1.0  # applied gain of the last pixel already output

    def _gains(self, x: np.ndarray) -> np.ndarray:
        n = -(-x.shape[0] // PIXEL)
        if x.shape[0] != n * PIXEL:
            padded = np.zeros((n * PIXEL, self.channels), dtype=np.int32)
            padded[: x.shape[0]] = x
            x = padded
        peak = np.abs(x).reshape(n, -1).max(axis=1).astype(np.float64)
        need = np.minimum(1.0, self.threshold / np.maximum(peak, 1.0))
        if self._g_before >= 1.0 and need.min() >= 1.0:
            return need  # nothing to limit
        steps = np.arange(n) * self.release
        run = np.minimum.accumulate(np.concatenate([[self._g_before + self.release],
                                                    need - steps]))[1:]
        return np.minimum(run + steps, 1.0)

    def _apply(self, x: np.ndarray, gains: np.ndarray, pixels: int, end_gain: float
               ) -> np.ndarray:
        """Output the first `pixels` pixels of `x`, ramping to `end_gain` at their end."""
        count = min(pixels * PIXEL, x.shape[0])
        if end_gain >= 1.0 and self._g_before >= 1.0 and gains[:pixels].min() >= 1.0:
            self._g_before = 1.0  # nothing to limit: the common case, kept cheap
            return x[:count].astype(np.int16)
        before = np.concatenate([[min(self._g_before, gains[0])],
                                 np.minimum(gains[: pixels - 1], gains[1:pixels])])
        after = np.concatenate([before[1:], [end_gain]])
        self._g_before = float(gains[pixels - 1])
        out = np.zeros((pixels * PIXEL, self.channels), dtype=np.float64)
        out[:count] = x[:count]
        shaped = out.reshape(pixels, PIXEL, self.channels)
        active = np.flatnonzero((before < 1.0) | (after < 1.0))
        frac = np.arange(PIXEL, dtype=np.float64) / PIXEL
        ramp = before[active, None] + (after - before)[active, None] * frac[None, :]
        shaped[active] *= ramp[:, :, None]
        return np.clip(np.rint(out[:count]), -32767, 32767).astype(np.int16)

    def process(self, x: np.ndarray) -> np.ndarray:
        """Limit int32 samples (n, channels); returns the int16 samples finished so far."""
        buf = np.concatenate([self._held, x]) if self._held.shape[0] else x
        pixels = buf.shape[0] // PIXEL
        if pixels < 2:
            self._held = buf
            return np.empty((0, self.channels), dtype=np.int16)
        gains = self._gains(buf[: pixels * PIXEL])
        ready = pixels - 1
        out = self._apply(buf, gains, ready, min(gains[ready - 1], gains[ready]))
        self._held = buf[ready * PIXEL:].copy()
        return out

    def flush(self) -> np.ndarray:
        """The held-back samples, limited; the limiter is reset afterwards."""
        buf, self._held = self._held, np.empty((0, self.channels), dtype=np.int32)
        if not buf.shape[0]:
            return np.empty((0, self.channels), dtype=np.int16)
        gains = self._gains(buf)
        pixels = gains.size
        out = self._apply(buf, gains, pixels, float(gains[-1]))
        self._g_before = 1.0
        return out
