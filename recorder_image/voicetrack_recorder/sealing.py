"""When the recorder may seal a window: SEAL_DELAY_SLOTS behind the session clock, and
never past what the source has delivered (its watermark) unless the source is stuck.
Pure functions of slots (20 ms); `voicetrack_recorder.recorder` applies them every tick
(and re-exports them: they lived there before)."""

from __future__ import annotations

SEAL_DELAY_SLOTS = 20
"""Seal a window 400 ms after its end so frames still held by a jitter buffer (reordering,
waiting for the next DAVE epoch's keys: up to ~250 ms) make it in."""

MAX_SOURCE_LAG_SLOTS = 500
"""How far (slots: 10 s) a source's watermark may trail the clock before windows are sealed
without it: a stuck source must not hold every chunk back forever."""


def source_watermark(source: object) -> int | None:
    """The slot before which `source` has delivered every frame it will deliver, when it
    says (`watermark_slot()`; the `files` and `discord` sources do); None when it cannot."""
    fn = getattr(source, "watermark_slot", None)
    return fn() if callable(fn) else None


def sealable_slot(now: int, watermark: int | None) -> int:
    """The slot up to which windows may be sealed at clock slot `now`: SEAL_DELAY_SLOTS
    behind the clock, and never past what the source has delivered (`watermark`) unless
    it trails by more than MAX_SOURCE_LAG_SLOTS. Sealing earlier would drop a late
    source's frames as late: a starved ffmpeg (files) or a late tick (discord) cost the
    last 0.6 s of every 5 s chunk under load before this rule."""
    by_clock = now - SEAL_DELAY_SLOTS
    if watermark is None or watermark >= by_clock or by_clock - watermark > MAX_SOURCE_LAG_SLOTS:
        return by_clock
    return watermark
