"""A pause stays a pause across a container restart after its resume, and at stop.

On resume the `paused` gap is the chunker's (`Chunker.gap`) until the resumed window's
first chunk is spooled: a restart in that window (chunk length plus the seal delay), or
while that chunk's markers were spooled and it was not, took the whole pause for
`recorder-restart` time (silence instead of cut). Now it is kept in the spool's
`unsaid.json` too (`Recorder._keep_unsaid`). At stop, a pause that begins the time left
unsaid is carried by the consent marker placed after it, never with a marker on its first
20 ms (which a restart then played as silence).

Real Spool and libopus (`recorder_rig`); the Kubernetes client points at a loopback port
nothing listens on, so the session's RecordingChunks are handed to `prepare` in a list.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest

from tests.unit.recorder_rig import LAYOUT
from tests.unit.test_recorder_spool_faults import five_s, paused_between_dropped_windows
from tests.unit.test_recorder_unsaid_restart import (
    WINDOW,
    paused_after_a_dropped_window,
    pending,
    record,
    restarted,
)
from voicetrack.chunkspec import ChunkSpec, Gap
from voicetrack_recorder.recorder import Recorder
from voicetrack_recorder.spool import Spool

pytestmark = pytest.mark.unit

LOST, PAUSED, RESTART = "connection-lost", "paused", "recorder-restart"


class Crash(BaseException):
    """The container dies (not an Exception: `_spool` does not take it for a failed
    write, so what was spooled before it stays on disk)."""


def unsaid_on_disk(tmp_path: Path) -> list[Gap]:
    """What a next container's Spool finds in `unsaid.json`."""
    return Spool(tmp_path / "s", 1 << 30, LAYOUT, "standup").unsaid


async def resumed_at_100_s(rec: Recorder, now: list[float]) -> None:
    """Resume at 100 s (slot 5000); the resumed window is not sealed yet."""
    now[0] = 100.0
    rec.kube.paused = False
    await rec._follow_pause(5_000)


async def test_a_restart_after_a_resume_keeps_the_pause_after_a_dropped_window(
        tmp_path: Path) -> None:
    """[5, 7) s dropped at a pause; restart while paused; resume at 100 s; the container
    restarts again at 101 s, before the resumed window is sealed. The next run carries
    [5, 7) s lost, [7, 100) s paused (cut) and [100, 101) s recorder-restart. Before, one
    `recorder-restart` gap [7, 101) s: 93 s of pause played as silence."""
    now = [60.0]
    await paused_after_a_dropped_window(tmp_path, now)
    rec = await restarted(tmp_path, now, paused=True)
    await resumed_at_100_s(rec, now)
    assert unsaid_on_disk(tmp_path) == [Gap(start_ms=5_000, end_ms=7_000, cause=LOST),
                                        Gap(start_ms=7_000, end_ms=100_000, cause=PAUSED)]
    now[0] = 101.0
    rec = await restarted(tmp_path, now, paused=False)
    await record(rec, 5_050, 5_050 + WINDOW)
    await rec._spool(rec.chunker.seal())
    assert pending(rec) == [
        (0, 0, 5_000, None, 1),
        (1, 6_980, 7_000, Gap(start_ms=5_000, end_ms=6_980, cause=LOST), 0),
        (2, 100_000, 100_020, Gap(start_ms=7_000, end_ms=100_000, cause=PAUSED), 0),
        (3, 101_000, 106_000, Gap(start_ms=100_020, end_ms=101_000, cause=RESTART), 1)]
    assert unsaid_on_disk(tmp_path) == []  # carried


async def resumed_without_a_dropped_window(tmp_path: Path, now: list[float]) -> Recorder:
    """Chunks [0, 5) and [5, 7) s spooled (not uploaded), paused at 7 s, resumed at
    100 s; the resumed window holds 40 ms of audio, not sealed."""
    rec = await restarted(tmp_path, now, paused=False)
    await record(rec, 0, WINDOW)
    await rec._spool(rec.chunker.seal())
    await record(rec, WINDOW, 350)
    rec.kube.paused = True
    await rec._follow_pause(350)
    await rec._spool(rec.chunker.seal())
    assert unsaid_on_disk(tmp_path) == []
    await resumed_at_100_s(rec, now)
    await record(rec, 5_000, 5_002)
    return rec


async def test_a_restart_after_a_plain_resume_keeps_the_pause(tmp_path: Path) -> None:
    """No window dropped: paused [7, 100) s, the container restarts at 101 s before the
    resumed window's chunk is spooled: the pause stays `paused` (cut). Before,
    `recorder-restart` [7, 101) s (silence)."""
    now = [0.0]
    await resumed_without_a_dropped_window(tmp_path, now)
    now[0] = 101.0
    rec = await restarted(tmp_path, now, paused=False)
    await record(rec, 5_050, 5_050 + WINDOW)
    await rec._spool(rec.chunker.seal())
    assert [(i, s, e, g) for i, s, e, g, _ in pending(rec)] == [
        (0, 0, 5_000, None), (1, 5_000, 7_000, None),
        (2, 100_000, 100_020, Gap(start_ms=7_000, end_ms=100_000, cause=PAUSED)),
        (3, 101_000, 106_000, Gap(start_ms=100_020, end_ms=101_000, cause=RESTART))]


async def test_a_restart_after_the_markers_but_not_the_chunk_keeps_the_pause(
        tmp_path: Path) -> None:
    """The resumed window's chunk is sealed at 105 s after the marker that carries the
    dropped [5, 7) s; the container dies after that marker is spooled, before the chunk
    is. The next run (106 s) adopts the marker and still carries the pause [7, 100) s as
    `paused`. Before, `recorder-restart` [7, 106) s."""
    now = [60.0]
    await paused_after_a_dropped_window(tmp_path, now)
    rec = await restarted(tmp_path, now, paused=True)
    await resumed_at_100_s(rec, now)
    await record(rec, 5_000, 5_000 + WINDOW)
    real = rec.uploader.spool_chunk

    def dies_at_the_chunk(item):  # type: ignore[no-untyped-def]
        if item.tracks:
            raise Crash()
        return real(item)

    rec.uploader.spool_chunk = dies_at_the_chunk  # type: ignore[method-assign]
    with pytest.raises(Crash):
        await rec._spool(rec.chunker.seal())
    now[0] = 106.0
    rec = await restarted(tmp_path, now, paused=False)
    await record(rec, 5_300, 5_300 + WINDOW)
    await rec._spool(rec.chunker.seal())
    assert [(i, s, e, g) for i, s, e, g, _ in pending(rec)][1:] == [
        (1, 6_980, 7_000, Gap(start_ms=5_000, end_ms=6_980, cause=LOST)),
        (2, 100_000, 100_020, Gap(start_ms=7_000, end_ms=100_000, cause=PAUSED)),
        (3, 106_000, 111_000, Gap(start_ms=100_020, end_ms=106_000, cause=RESTART))]


def api_in_a_list(rec: Recorder) -> list[ChunkSpec]:
    """The markers the API server creates, in a list (the rig's is unreachable); the
    chunks spooled before count as uploaded."""
    made: list[ChunkSpec] = []
    rec.uploader.create_marker = (  # type: ignore[method-assign]
        lambda spec, deadline: made.append(spec) is None)
    while rec._pending:
        rec.uploader.spool.remove(rec._pending.popleft())
    return made


async def test_a_pause_ending_what_is_given_up_gets_no_marker_inside_it(
        tmp_path: Path) -> None:
    """The pause a previous run resumed ([7, 100) s, after the dropped [5, 7) s) ends what
    a run stopping while paused gives up: the lost window gets its marker, the pause none
    (`give_up` took what ends the lost time for a lost window: a marker on the pause's
    last 20 ms, silence in it); it stays unsaid (the recording ends before it)."""
    now = [60.0]
    await paused_after_a_dropped_window(tmp_path, now)
    rec = await restarted(tmp_path, now, paused=True)
    await resumed_at_100_s(rec, now)
    now[0] = 101.0
    rec = await restarted(tmp_path, now, paused=True)
    made = api_in_a_list(rec)
    rec._give_up(None)
    rec._mark_consent(None)
    assert [(m.index, m.start_ms, m.end_ms, m.gap) for m in made] == [
        (1, 6_980, 7_000, Gap(start_ms=5_000, end_ms=6_980, cause=LOST))]
    assert unsaid_on_disk(tmp_path) == [Gap(start_ms=7_000, end_ms=100_000, cause=PAUSED)]


async def test_a_pause_left_unsaid_at_stop_is_carried_by_the_consent_marker(
        tmp_path: Path) -> None:
    """Restarted while paused after a resume that no chunk carried, a member opts out and
    the run stops: the consent marker goes after the pause [7, 100) s and carries it, so
    it is cut whole (not a marker on its first 20 ms)."""
    now = [0.0]
    await resumed_without_a_dropped_window(tmp_path, now)
    now[0] = 101.0
    rec = await restarted(tmp_path, now, paused=True)
    made = api_in_a_list(rec)
    rec.consent.see("200000000000000009")
    rec.consent.set_policy(["200000000000000009"], [])
    rec._give_up(None)
    rec._mark_consent(None)
    assert [(m.index, m.start_ms, m.end_ms, m.gap) for m in made] == [
        (2, 100_000, 100_020, Gap(start_ms=7_000, end_ms=100_000, cause=PAUSED))]
    assert [o.user_id for o in made[0].opted_out] == ["200000000000000009"]
    assert unsaid_on_disk(tmp_path) == []


async def test_the_consent_marker_after_a_refused_pause_marker_keeps_the_pause_whole(
        tmp_path: Path) -> None:
    """The marker carrying the pause [2, 600) s is refused at stop (once); the consent
    marker that follows carries it, and a container restarted at 700 s carries what is
    left ([600.02, 605) s lost): exactly 598 s are cut. Before, the consent marker sat
    on [2, 2.02) s while `unsaid.json` still began at 2 s, and the restarted run cut
    [2.02, 600) s: 20 ms of pause played as silence."""
    rec = five_s(tmp_path, [0.0])
    api: list[ChunkSpec] = []
    refused: list[int] = []

    def create(spec: ChunkSpec, deadline: object) -> bool:
        if spec.gap is not None and spec.gap.cause == PAUSED and not refused:
            refused.append(spec.index)
            return False
        api.append(spec)
        return True

    rec.uploader.create_marker = create  # type: ignore[method-assign]
    await paused_between_dropped_windows(rec)
    rec._give_up(None)
    rec._mark_consent(None)
    again = await restarted(tmp_path, [700.0], paused=False, existing=api)
    gaps = [c.gap for c in api if c.gap is not None] + again._unsaid
    assert sum(g.end_ms - g.start_ms for g in gaps if g.cause == PAUSED) == 598_000
    chain = [(c.gap.start_ms if c.gap else c.start_ms, c.end_ms) for c in api]
    assert all(a[1] == b[0] for a, b in pairwise(chain))
    assert again._unsaid[0].start_ms == api[-1].end_ms
