"""Review findings in the recorder's seal → spool path, with real libopus packets and a real
Spool (`recorder_rig`: the Kubernetes client and the object store point at a loopback port
nothing listens on; spooling touches neither).

(A) More than MAX_TRACKS speakers in one window made the spool's ChunkSpec raise a
ValidationError, and any disk error other than ENOSPC an OSError: neither is SpoolFull, so
either left the capture loop, the index was used up without a gap and the container
crash-looped, losing every chunk. Now the chunker keeps the MAX_TRACKS speakers with the
most frames, and any failure to spool a chunk drops its window into the next chunk's
`connection-lost` gap as a full spool does.

(B) A restart while paused took the last chunk's end (up to MAX_CLOCK_LEAD_MS ahead of this
node's clock) as the pause slot, and the resume opened the next window at the clock's "now",
before that end: an overlapping chunk, which promotion leaves out."""

from __future__ import annotations

import logging
import resource
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.unit.recorder_rig import LAYOUT, recorder_at, sine_packet
from voicetrack.chunkspec import ChunkSpec, Gap
from voicetrack.resources import MAX_CHUNK_INDEX, MAX_TRACKS
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.recorder import Recorder
from voicetrack_recorder.spool import Spool

pytestmark = pytest.mark.unit

WINDOW = 250
"""Slots of a 5 s chunk."""


def five_s(tmp_path: Path, now_s: list[float]) -> Recorder:
    """The rig's recorder of 5 s chunks (`recorder_rig.recorder_at`), its session clock at
    `now_s[0]` seconds (session time; mutable)."""
    return recorder_at(tmp_path, SessionClock(0, time_fn=lambda: now_s[0]), chunkSeconds=5)


def user(i: int) -> str:
    return f"{2 * 10**17 + i}"


async def test_more_than_max_tracks_speakers_keep_the_busiest_and_the_run_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """130 speakers in one window: the chunk spools with the 128 who sent the most frames
    (ties by user id), the two left out are named in a warning, and they are recorded
    again in the next window. Before, the spool's spec raised a ValidationError out of
    `_spool` (the run ended, the container crash-looped)."""
    rec = five_s(tmp_path, [0.0])
    packet = sine_packet()
    rec.chunker.open(0)
    for i in range(MAX_TRACKS + 2):  # users 0-126: 20+ frames; users 127-129: 5 each
        frames = 20 + i if i < MAX_TRACKS - 1 else 5
        for slot in range(frames):
            assert rec.push(user(i), slot, packet)
    with caplog.at_level(logging.WARNING):
        chunk = rec.chunker.seal()
        await rec._spool(chunk)
    assert chunk is not None and chunk.left_out == [user(128), user(129)]
    spec = rec._pending[-1].spec
    assert spec.index == 0 and len(spec.tracks) == MAX_TRACKS
    assert [t.user_id for t in spec.tracks] == [user(i) for i in range(MAX_TRACKS)]
    assert [t.frames for t in spec.tracks][-2:] == [20 + MAX_TRACKS - 2, 5]
    assert rec.chunker.stats.left_out == 10
    assert f"{user(128)}, {user(129)}" in caplog.text and "left out" in caplog.text
    for slot in range(WINDOW, WINDOW + 3):  # the next window records them again
        assert rec.push(user(129), slot, packet)
    await rec._spool(rec.chunker.seal())
    nxt = rec._pending[-1].spec
    assert (nxt.index, nxt.gap, [t.user_id for t in nxt.tracks]) == (1, None, [user(129)])


@contextmanager
def file_size_limit() -> Iterator[None]:
    """Within: every write past 4 KiB of a file fails with EFBIG (RLIMIT_FSIZE, SIGXFSZ
    ignored), a disk error that is not ENOSPC."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


async def test_a_disk_error_drops_the_window_into_the_next_chunks_gap(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An OSError other than ENOSPC while writing a chunk (here EFBIG from a file-size
    limit) is handled as a full spool: the window is dropped, its index given back, and
    the next chunk spooled carries it as a `connection-lost` gap. Before, the OSError left
    `_spool` (the run ended, the container crash-looped losing every chunk)."""
    rec = five_s(tmp_path, [0.0])
    packet = sine_packet()
    rec.chunker.open(0)

    async def window(n: int) -> None:
        for slot in range(n * WINDOW, (n + 1) * WINDOW):
            rec.push(user(1), slot, packet)
        await rec._spool(rec.chunker.seal())

    await window(0)
    with file_size_limit(), caplog.at_level(logging.ERROR):
        await window(1)
    assert [s.index for s in rec._pending] == [0] and rec.chunker.next_index == 1
    assert "File too large" in caplog.text and "chunk 1 [5000, 10000) ms dropped" in caplog.text
    assert not (rec.uploader.spool.root / "000001").exists()  # nothing half-written left
    await window(2)
    last = rec._pending[-1].spec
    assert (last.index, last.start_ms) == (1, 10_000)
    assert last.gap == Gap(start_ms=5_000, end_ms=10_000, cause="connection-lost")


@pytest.mark.parametrize(("resume_s", "gap"), [
    (70.0, None),
    (100.0, Gap(start_ms=90_000, end_ms=100_000, cause="paused"))])
async def test_a_paused_restart_resumes_at_the_last_chunks_end_at_the_earliest(
        tmp_path: Path, resume_s: float, gap: Gap | None) -> None:
    """The session's last chunk ends at 90 s, 30 s ahead of this node's clock (skew
    within MAX_CLOCK_LEAD_MS), and the restarted recorder starts paused. A resume at 70 s
    opens at 90 s without a gap (before, at 70 s: a chunk over the last one's window,
    which promotion leaves out); one at 100 s opens there after a `paused` gap from 90 s."""
    now = [60.0]
    rec = five_s(tmp_path, now)
    rec.chunker.next_index = 7
    rec.resume_point(90_000, paused=True)
    assert not rec.chunker.is_open
    now[0] = resume_s
    rec.kube.paused = False
    await rec._follow_pause(rec.clock.now_slot())
    packet = sine_packet()
    start = max(rec.clock.now_slot(), 90_000 // 20)
    for slot in range(start - 10, start + WINDOW):  # frames before the window are late
        rec.push(user(1), slot, packet)
    await rec._spool(rec.chunker.seal())
    spec = rec._pending[-1].spec
    assert (spec.index, spec.start_ms, spec.gap) == (7, max(resume_s * 1000, 90_000), gap)
    assert spec.tracks[0].frames == WINDOW


async def spool_while_full(rec: Recorder) -> None:
    """Seal the open window and spool it while the spool is full (its bound 0 bytes)."""
    spool = rec.uploader.spool
    bound, spool.max_bytes = spool.max_bytes, 0
    try:
        await rec._spool(rec.chunker.seal())
    finally:
        spool.max_bytes = bound


def pending(rec: Recorder) -> list[tuple[int, int, int, Gap | None, int]]:
    """(index, startMs, endMs, gap, tracks) of each chunk spooled and not uploaded."""
    return [(s.spec.index, s.spec.start_ms, s.spec.end_ms, s.spec.gap, len(s.spec.tracks))
            for s in rec._pending]


async def test_a_window_dropped_at_a_pause_keeps_the_pause_a_pause(tmp_path: Path) -> None:
    """The window sealed at a pause [0, 2) s is dropped (the spool full); the recording
    resumes at 10 s. The pause [2, 10) s stays a `paused` gap (promotion cuts it) and the
    dropped window a `connection-lost` one (silence): a marker chunk without tracks on
    the lost window's last 20 ms carries it, the resumed chunk the pause. Before, the
    resumed chunk's gap became `connection-lost` over [0, 10) s: 8 s of pause rendered as
    silence in the output."""
    now = [0.0]
    rec = five_s(tmp_path, now)
    packet = sine_packet()
    rec.chunker.open(0)
    for slot in range(100):
        rec.push(user(1), slot, packet)
    rec.kube.paused = True
    await rec._follow_pause(100)
    await spool_while_full(rec)
    assert not rec._pending and rec.chunker.next_index == 0
    rec.kube.paused = False
    await rec._follow_pause(500)
    for slot in range(500, 500 + WINDOW):
        rec.push(user(1), slot, packet)
    await rec._spool(rec.chunker.seal())
    assert pending(rec) == [
        (0, 1_980, 2_000, Gap(start_ms=0, end_ms=1_980, cause="connection-lost"), 0),
        (1, 10_000, 15_000, Gap(start_ms=2_000, end_ms=10_000, cause="paused"), 1)]
    assert rec.chunker.next_index == 2


async def test_a_dropped_window_after_a_pause_keeps_the_pause_a_pause(tmp_path: Path) -> None:
    """Paused [2, 10) s after chunk 0; the first window after the resume, [10, 15) s and
    carrying the `paused` gap, is dropped (the spool full); the next one spools. The pause
    stays `paused` (carried by a marker on the lost window's first 20 ms) and the lost
    window `connection-lost`. Before, the dropped chunk's pause was folded into one
    `connection-lost` gap [2, 15) s."""
    rec = five_s(tmp_path, [0.0])
    packet = sine_packet()
    rec.chunker.next_index = 1
    rec.resume_point(2_000, paused=True)  # chunk 0 ended at 2 s, paused since
    rec.kube.paused = False
    await rec._follow_pause(500)
    for slot in range(500, 500 + 2 * WINDOW):
        rec.push(user(1), slot, packet)
    await spool_while_full(rec)
    await rec._spool(rec.chunker.seal())
    assert pending(rec) == [
        (1, 10_000, 10_020, Gap(start_ms=2_000, end_ms=10_000, cause="paused"), 0),
        (2, 15_000, 20_000, Gap(start_ms=10_020, end_ms=15_000, cause="connection-lost"), 1)]
    assert rec.chunker.next_index == 3


def markers_made(rec: Recorder, refuse_from: int | None = None) -> list[ChunkSpec]:
    """Capture the marker chunks `rec` creates at stop (the API stands in a list); with
    `refuse_from`, the API refuses that index and every later one (the deadline passed)."""
    made: list[ChunkSpec] = []

    def create(spec: ChunkSpec, deadline: object) -> bool:
        if refuse_from is not None and spec.index >= refuse_from:
            return False
        made.append(spec)
        return True

    rec.uploader.create_marker = create  # type: ignore[method-assign]
    return made


async def paused_between_dropped_windows(rec: Recorder) -> None:
    """[0, 2) s of speech, paused [2, 600) s, [600, 605) s of speech: both windows dropped
    while the spool is full, so nothing is spooled when the recorder stops."""
    packet = sine_packet()
    rec.chunker.open(0)
    for slot in range(100):
        rec.push(user(1), slot, packet)
    rec.kube.paused = True
    await rec._follow_pause(100)
    await spool_while_full(rec)
    rec.kube.paused = False
    await rec._follow_pause(30_000)
    for slot in range(30_000, 30_000 + WINDOW):
        rec.push(user(1), slot, packet)
    await spool_while_full(rec)


async def test_given_up_at_stop_a_pause_between_dropped_windows_stays_a_pause(
        tmp_path: Path) -> None:
    """The stop path (`stopmarkers.give_up`) with a pause between two windows the full
    spool dropped: the markers carry [0, 2) s and [600, 605) s as `connection-lost`
    (silence) and [2, 600) s as `paused` (cut), chained at consecutive indexes from 0.
    Before, one `connection-lost` gap took [0, 605) s: 598 s of pause became silence."""
    rec = five_s(tmp_path, [0.0])
    made = markers_made(rec)
    await paused_between_dropped_windows(rec)
    rec._give_up(None)
    assert [(m.index, m.start_ms, m.end_ms, m.gap) for m in made] == [
        (0, 1_980, 2_000, Gap(start_ms=0, end_ms=1_980, cause="connection-lost")),
        (1, 600_000, 600_020, Gap(start_ms=2_000, end_ms=600_000, cause="paused")),
        (2, 604_980, 605_000, Gap(start_ms=600_020, end_ms=604_980,
                                  cause="connection-lost"))]
    assert rec.chunker.next_index == 3 and rec._last == (605_000, [])
    assert rec.uploader.stats.lost == [Gap(start_ms=0, end_ms=2_000, cause="connection-lost"),
                                       Gap(start_ms=600_000, end_ms=605_000,
                                           cause="connection-lost")]


async def test_a_pending_chunks_pause_given_up_at_stop_stays_a_pause(tmp_path: Path) -> None:
    """A chunk spooled after a pause and not uploaded by the deadline is given up: its
    window is lost, its `paused` gap stays a pause (a marker on the window's first 20 ms
    carries it). Before, the pause was folded into the lost window's gap."""
    rec = five_s(tmp_path, [0.0])
    made = markers_made(rec)
    rec.chunker.next_index = 1
    rec.resume_point(2_000, paused=True)  # chunk 0 ended at 2 s, paused since
    rec.kube.paused = False
    await rec._follow_pause(500)
    packet = sine_packet()
    for slot in range(500, 500 + WINDOW):
        rec.push(user(1), slot, packet)
    await rec._spool(rec.chunker.seal())
    assert len(rec._pending) == 1
    rec._give_up(None)
    assert not rec._pending and [(m.index, m.start_ms, m.end_ms, m.gap) for m in made] == [
        (1, 10_000, 10_020, Gap(start_ms=2_000, end_ms=10_000, cause="paused")),
        (2, 14_980, 15_000, Gap(start_ms=10_020, end_ms=14_980, cause="connection-lost"))]
    assert rec.chunker.next_index == 3


async def test_markers_refused_at_stop_end_the_run_of_indexes(tmp_path: Path) -> None:
    """The API refuses the second marker (its deadline passed): the first stays, the
    chunker's next index follows it (no hole for a consent marker to skip), the last word
    is the first marker's end, and the word on consent is unsaid (None), so
    `mark_consent` writes one."""
    rec = five_s(tmp_path, [0.0])
    made = markers_made(rec, refuse_from=1)
    await paused_between_dropped_windows(rec)
    rec._give_up(None)
    assert [m.index for m in made] == [0]
    assert rec.chunker.next_index == 1 and rec._last == (2_000, None)


@pytest.mark.parametrize("refusal", ["api", "model"])
async def test_a_marker_refused_at_stop_leaves_no_time_hole_before_the_consent_marker(
        tmp_path: Path, refusal: str) -> None:
    """The marker carrying the pause [2, 600) s is refused (by the API: its deadline, a
    403; or by the model: here its index past MAX_CHUNK_INDEX), so the run of markers ends
    after the first, [1.98, 2) s. The consent marker that follows (the word on consent is
    unsaid) starts where the pause left unsaid after it ends, 600 s, and carries it: every
    chunk starts where the previous one (or its gap) ends, and the pause stays cut whole
    (`test_recorder_resume_restart`). The time not carried after it stays unsaid in the
    spool, with its causes, for a restarted container. Before, the consent marker sat at
    605 s, after the end of the markers planned: a hole [2, 605) s with no gap, which
    promotion takes for missing chunks (`chunk-failed` silence: 598 s of pause rendered
    as silence)."""
    rec = five_s(tmp_path, [0.0])
    made: list[ChunkSpec] = []

    refused: list[int] = []

    def create(spec: ChunkSpec, deadline: object) -> bool:  # the API stands in a list
        if spec.gap is not None and spec.gap.cause == "paused" and refusal == "api" \
                and not refused:  # the pause's marker, once
            refused.append(spec.index)
            return False
        made.append(spec)
        return True

    rec.uploader.create_marker = create  # type: ignore[method-assign]
    await paused_between_dropped_windows(rec)
    if refusal == "model":  # the pause's marker (index 1) past the model's bound
        spool = rec.uploader.spool
        real, asked = spool.marker_spec, []

        def marker_spec(index: int, *args: Any, **kwargs: Any) -> ChunkSpec:
            asked.append(index)  # the first spec asked for index 1 is the pause's marker
            return real(index + (MAX_CHUNK_INDEX if asked.count(1) == 1 == index else 0),
                        *args, **kwargs)

        spool.marker_spec = marker_spec  # type: ignore[method-assign]
    rec._give_up(None)
    rec._mark_consent(None)
    assert [(m.index, m.start_ms, m.end_ms, m.gap) for m in made] == [
        (0, 1_980, 2_000, Gap(start_ms=0, end_ms=1_980, cause="connection-lost")),
        (1, 600_000, 600_020, Gap(start_ms=2_000, end_ms=600_000, cause="paused"))]
    assert rec.chunker.next_index == 2
    assert Spool(rec.uploader.spool.root, 1 << 30, LAYOUT, "standup").unsaid == [
        Gap(start_ms=600_020, end_ms=605_000, cause="connection-lost")]


async def test_chunks_given_up_at_stop_leave_no_index_hole(tmp_path: Path) -> None:
    """Three chunks spooled and not uploaded are given up as one lost window, one marker
    at the first one's index: the chunker's next index follows it (the consent marker or
    a next recorder takes index 1). Before, it stayed at 3 and indexes 1 and 2 never
    existed, which stops the audio so far at index 1 for the rest of the session."""
    rec = five_s(tmp_path, [0.0])
    made = markers_made(rec)
    packet = sine_packet()
    rec.chunker.open(0)
    for w in range(3):
        for slot in range(w * WINDOW, (w + 1) * WINDOW):
            rec.push(user(1), slot, packet)
        await rec._spool(rec.chunker.seal())
    assert [s.index for s in rec._pending] == [0, 1, 2]
    rec._give_up(None)
    assert [(m.index, m.start_ms, m.end_ms) for m in made] == [(0, 14_980, 15_000)]
    assert rec.chunker.next_index == 1
    assert rec.uploader.stats.lost == [Gap(start_ms=0, end_ms=15_000, cause="connection-lost")]
