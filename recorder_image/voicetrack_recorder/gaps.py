"""Gaps waiting for a chunk to carry them, each with its own cause (pure).

A chunk carries one gap (`ChunkSpec.gap`, the interval before it). When windows are dropped
(the spool full or failing: `Recorder._spool`), the interval before the next chunk spooled
can hold gaps of different causes: a `paused` interval (cut from the output) next to a
dropped window (`connection-lost`, rendered as silence). Folding them into one gap gave
the pause the lost window's cause: minutes of pause became minutes of silence. Instead,
`carry` plans marker chunks without tracks, 20 ms each, placed inside a silent interval
(where a marker's window is silence anyway), so each gap keeps its cause:

- a silent interval followed by another cause: a marker on its last 20 ms carries the
  rest of it;
- a `paused` interval followed by another cause: a marker on the first 20 ms of what
  follows carries the pause.

What waits unsaid outlives a container restart in the spool (`Spool.save_unsaid`); the
next run keeps it when it follows the session's last chunk (`follow`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from voicetrack.audio import FRAME_MS
from voicetrack.chunkspec import Gap

LOST: Final = "connection-lost"
RESTART: Final = "recorder-restart"
CUT: Final = "paused"
"""The one cause promotion cuts from the output; every other becomes silence."""


@dataclass(frozen=True)
class Marker:
    """A chunk without tracks: window `[start_ms, end_ms)` session ms, after `gap`."""

    start_ms: int
    end_ms: int
    gap: Gap | None


def unsaid(gaps: list[Gap], until_ms: int) -> list[Gap]:
    """`gaps` (in time order, each not before the previous one's end) as contiguous
    intervals ending at `until_ms` (ms): a hole between two, or between the last and
    `until_ms`, becomes a `connection-lost` interval (nothing was captured there); adjacent
    intervals of one cause are merged; empty ones are left out."""
    out: list[Gap] = []

    def add(gap: Gap) -> None:
        if out and out[-1].end_ms < gap.start_ms:  # a hole: nothing captured there
            add(Gap(start_ms=out[-1].end_ms, end_ms=gap.start_ms, cause=LOST))
        if out and out[-1].cause == gap.cause:
            out[-1] = Gap(start_ms=out[-1].start_ms, end_ms=gap.end_ms, cause=gap.cause)
        else:
            out.append(gap)

    for gap in gaps:
        add(gap)
    if out and out[-1].end_ms < until_ms:
        add(Gap(start_ms=out[-1].end_ms, end_ms=until_ms, cause=LOST))
    return out


def unsaid_now(gaps: list[Gap], unsealed: list[tuple[int, Gap | None, int | None]],
               paused: bool) -> list[Gap]:
    """What a restarted container must carry (`unsaid` shape; [] none), given `gaps`
    (the recorder's unsaid ones, contiguous from the last chunk spooled), the recording
    not sealed yet (`Chunker.unsealed`: start slot, gap, stop slot) and whether the
    recorder is `paused` now:

    - nothing stopped (recording, or all sealed): `gaps`, then the open window's gap
      when it is a pause (a resume whose window is not spooled yet);
    - a stop not sealed yet (a pause waits for its window's seal, maybe with resumes
      queued behind it): `gaps`, then each stretch's gap and the stretch itself as
      `recorder-restart` time up to its stop (lost if the run dies before the seal;
      silence), and, when `paused`, the pause's first 20 ms from the last stop: a
      restarted run paused continues the pause from there, so the cut starts where the
      pause began, not at the last chunk spooled (before, the stopped window was cut
      with it and all later audio moved earlier; a resume queued behind the seal,
      known nowhere on disk, became `recorder-restart` silence)."""
    if all(stop is None for _, _, stop in unsealed):
        held = unsealed[0][1] if unsealed else None
        if held is None or held.cause != CUT:
            return list(gaps)
        return unsaid([*gaps, held], held.end_ms)
    out = list(gaps)
    for start, gap, stop in unsealed:
        if gap is not None:
            out.append(gap)
        if stop is not None and stop > start:
            out.append(Gap(start_ms=start * FRAME_MS, end_ms=stop * FRAME_MS, cause=RESTART))
    last = unsealed[-1][2]
    if paused and last is not None:
        out.append(Gap(start_ms=last * FRAME_MS, end_ms=(last + 1) * FRAME_MS, cause=CUT))
    return unsaid(out, out[-1].end_ms)


def carry(gaps: list[Gap]) -> tuple[list[Marker], Gap | None]:
    """How contiguous `gaps` (`unsaid`: adjacent ones of different causes) are carried:
    (the marker chunks to write first, in order; the gap of the chunk that follows them).
    A silent interval of 20 ms needs no gap of its own (its marker covers it); one of
    40 ms or more between a pause and another cause takes two markers."""
    markers: list[Marker] = []
    held: Gap | None = None
    for gap in gaps:
        if held is None:
            held = gap
        elif held.cause != CUT:  # a marker on held's last 20 ms carries the rest of it
            end = held.end_ms - FRAME_MS
            markers.append(Marker(end, held.end_ms, Gap(
                start_ms=held.start_ms, end_ms=end, cause=held.cause)
                if end > held.start_ms else None))
            held = gap
        else:  # a pause: a marker on the first 20 ms of the silent gap after it
            start = gap.start_ms + FRAME_MS
            markers.append(Marker(gap.start_ms, start, held))
            held = Gap(start_ms=start, end_ms=gap.end_ms, cause=gap.cause) \
                if gap.end_ms > start else None
    return markers, held


def follow(gaps: list[Gap], end_ms: int | None) -> list[Gap]:
    """The part of contiguous `gaps` (a previous run's unsaid ones) after session ms
    `end_ms`, the end of the session's last chunk (None: there is none, so all of them):
    all of `gaps` when they start there; the rest of them when that chunk ends inside
    them (a marker chunk spooled with the chunk that was to carry them, the run ended
    before that one); [] when they start after it (a hole: the chunk they followed is
    gone) or end at or before it (a chunk carried them)."""
    if end_ms is None or not gaps:
        return list(gaps)
    if not gaps[0].start_ms <= end_ms < gaps[-1].end_ms:
        return []
    return [g if g.start_ms >= end_ms else Gap(start_ms=end_ms, end_ms=g.end_ms, cause=g.cause)
            for g in gaps if g.end_ms > end_ms]


def spans(gaps: list[Gap]) -> str:
    """`gaps` for a log line: `[start, end) ms cause, …`."""
    return ", ".join(f"[{g.start_ms}, {g.end_ms}) ms {g.cause}" for g in gaps)
