"""When the recorder may seal a window: SEAL_DELAY_SLOTS behind the session clock, and
never past what the source has delivered (its watermark) unless the source is stuck.
Pure functions of slots (20 ms); `voicetrack_recorder.recorder` applies them every tick
(and re-exports them: they lived there before). The same rule holds at the end of a run
(`seal_tail`) and at a pause (the recorder's loop), where the window ends at the stop or
pause slot: sealing it there at once dropped the last ~400 ms still held by a jitter
buffer (review fault: every stop lost the end of the last words, every pause the words
before it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from voicetrack.audio import FRAME_MS
from voicetrack_recorder.chunker import Chunker, SealedChunk

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


TAIL_WAIT_MAX_S = 2.0
"""How long (s) the end of a run waits at most for the seal rule before sealing its last
windows anyway: the rule takes SEAL_DELAY_SLOTS (400 ms) with a source on time, longer
with a late one (its watermark); a stuck source must not hold up a forced end (SIGTERM:
this plus the 20 s flush and 5 s marker graces fit the pod's 30 s)."""


async def seal_tail(chunker: Chunker, end: int, sealable: Callable[[], int],
                    spool: Callable[[SealedChunk | None], Awaitable[None]],
                    wait_s: float, each: Callable[[], None] = lambda: None) -> None:
    """Seal the last windows of a run that ends at slot `end` (the slot of the stop,
    fixed when it came): recording stops there (`Chunker.stop`: the frames of later slots
    are refused, they come after the stop), and each window is handed to `spool` once
    `sealable()` (the seal rule now: `sealable_slot` of the clock and the source's
    watermark) reaches its end, polled every 20 ms while the source still delivers the
    frames its jitter buffer holds; after `wait_s` seconds (0 when the source has ended:
    nothing more will come) the rest is sealed at once. `each` runs before every poll
    (the recorder follows consent there). Returns when no window is open."""
    chunker.stop(end)
    give_up = time.monotonic() + wait_s
    while chunker.is_open:
        each()
        if chunker.due(sealable()) or time.monotonic() >= give_up:
            await spool(chunker.seal())
        else:
            await asyncio.sleep(FRAME_MS / 1000)
