"""`gaps.unsaid` and `gaps.carry`: gaps of different causes waiting for one chunk are each
carried with their own cause, by marker chunks placed where the output is silence."""

from __future__ import annotations

import pytest

from voicetrack.chunkspec import Gap
from voicetrack_recorder.gaps import Marker, carry, unsaid

pytestmark = pytest.mark.unit


def lost(a: int, b: int) -> Gap:
    return Gap(start_ms=a, end_ms=b, cause="connection-lost")


def paused(a: int, b: int) -> Gap:
    return Gap(start_ms=a, end_ms=b, cause="paused")


def test_holes_become_lost_and_one_cause_merges() -> None:
    assert unsaid([], 5_000) == []
    assert unsaid([lost(0, 1_000), lost(1_000, 2_000), paused(3_000, 4_000)], 5_000) == [
        lost(0, 3_000), paused(3_000, 4_000), lost(4_000, 5_000)]


def test_one_cause_needs_no_marker() -> None:
    assert carry([lost(0, 3_000)]) == ([], lost(0, 3_000))
    assert carry([]) == ([], None)


@pytest.mark.parametrize("gaps", [
    [lost(0, 2_000), paused(2_000, 10_000)],
    [paused(0, 2_000), lost(2_000, 2_020)],
    [paused(0, 2_000), lost(2_000, 4_000), paused(4_000, 9_000), lost(9_000, 9_020),
     paused(9_020, 9_500)],
    [Gap(start_ms=0, end_ms=20, cause="recorder-restart"), lost(20, 40), paused(40, 60)],
])
def test_every_interval_keeps_its_cause(gaps: list[Gap]) -> None:
    """Rebuilt from the markers and the chunk's gap: each ms of the input is covered by a
    gap of its own cause or by a marker's window (silence) inside a silent interval, the
    pieces contiguous from the first start to the last end."""
    markers, last = carry(gaps)
    pieces: list[tuple[int, int, str]] = []
    for m in markers:
        if m.gap is not None:
            pieces.append((m.gap.start_ms, m.gap.end_ms, m.gap.cause))
        pieces.append((m.start_ms, m.end_ms, "marker"))
    if last is not None:
        pieces.append((last.start_ms, last.end_ms, last.cause))
    assert [p[0] for p in pieces[1:]] == [p[1] for p in pieces[:-1]]  # contiguous
    assert (pieces[0][0], pieces[-1][1]) == (gaps[0].start_ms, gaps[-1].end_ms)
    for start, end, cause in pieces:
        (source,) = [g for g in gaps if g.start_ms <= start and end <= g.end_ms]
        assert cause == source.cause or (cause == "marker" and source.cause != "paused")


def test_a_pause_between_two_lost_windows_takes_two_markers() -> None:
    assert carry([paused(0, 1_000), lost(1_000, 2_000), paused(2_000, 3_000)]) == (
        [Marker(1_000, 1_020, paused(0, 1_000)), Marker(1_980, 2_000, lost(1_020, 1_980))],
        paused(2_000, 3_000))
