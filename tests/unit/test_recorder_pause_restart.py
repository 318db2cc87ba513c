"""A restart while paused cuts from where the pause began, not from the last chunk's end.

A pause stops the open window at its slot (`Chunker.stop`), but the loop seals that window
only once the seal rule lets it (the seal delay, and up to ~10 s when the source lags).
The pause's start lived in memory only until then: a container that died in that time
(a crash, an OOM kill) came back knowing only the last chunk spooled, which ends where the
stopped window starts, so the restarted recorder paused from there and the resume cut
[that end, the resume) as paused: the lost window (up to a chunk long) was cut, not
silence, and all audio after it moved earlier by that much. Likewise a resume queued
behind that seal (`Chunker.open`) lived in memory only: a crash then made the pause
`recorder-restart` silence instead of a cut (issue 12's residual risk). Now what is not
sealed yet is kept in `unsaid.json` from the pause on (`gaps.unsaid_now`): the stopped
window as `recorder-restart` time (lost if the run dies), the pause from its real start.

Real Spool and libopus (`recorder_rig`); the session's RecordingChunks (none: chunk 0
is still in the spool) are handed to `prepare`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.recorder_rig import LAYOUT
from tests.unit.test_recorder_unsaid_restart import (
    WINDOW,
    five_s,
    pending,
    record,
    restarted,
    resume_and_seal,
)
from voicetrack.chunkspec import Gap
from voicetrack_recorder.gaps import unsaid_now
from voicetrack_recorder.recorder import Recorder
from voicetrack_recorder.spool import Spool

pytestmark = pytest.mark.unit

PAUSED, RESTART = "paused", "recorder-restart"


def unsaid_on_disk(tmp_path: Path) -> list[Gap]:
    """What a next container's Spool finds in `unsaid.json`."""
    return Spool(tmp_path / "s", 1 << 30, LAYOUT, "standup").unsaid


async def paused_before_the_seal(tmp_path: Path, now: list[float]) -> Recorder:
    """Chunk 0 [0, 5) s spooled (S3 away: not uploaded); a tone in [5, 7) s; paused at
    7 s: the stopped window [5, 7) s waits for its seal (the source lags)."""
    now[0] = 7.0
    rec = five_s(tmp_path, now)
    rec.chunker.open(0)
    await record(rec, 0, WINDOW)
    await rec._spool(rec.chunker.seal())
    await record(rec, WINDOW, 350)
    rec.kube.paused = True
    await rec._follow_pause(350)
    assert rec.chunker.is_open and pending(rec) == [(0, 0, 5_000, None, 1)]
    return rec


async def test_a_restart_while_paused_before_the_seal_cuts_from_the_pause(
        tmp_path: Path) -> None:
    """The container dies at 7.5 s, before the stopped window is sealed, and restarts
    paused; the resume comes at 100 s. The window [5, 7) s is lost: silence
    (`recorder-restart`, carried by a marker on its last 20 ms); the pause is cut from
    7 s, where it began. Before, the restarted run paused from chunk 0's end: `paused`
    [5, 100) s cut the lost window too, moving all later audio 2 s early."""
    now = [0.0]
    await paused_before_the_seal(tmp_path, now)
    assert unsaid_on_disk(tmp_path) == [Gap(start_ms=5_000, end_ms=7_000, cause=RESTART),
                                        Gap(start_ms=7_000, end_ms=7_020, cause=PAUSED)]
    now[0] = 7.5
    rec = await restarted(tmp_path, now, paused=True)
    await resume_and_seal(rec, now)
    assert pending(rec) == [
        (0, 0, 5_000, None, 1),
        (1, 6_980, 7_000, Gap(start_ms=5_000, end_ms=6_980, cause=RESTART), 0),
        (2, 100_000, 105_000, Gap(start_ms=7_000, end_ms=100_000, cause=PAUSED), 1)]
    assert unsaid_on_disk(tmp_path) == []  # carried


async def test_the_stopped_windows_seal_leaves_nothing_unsaid(tmp_path: Path) -> None:
    """Sealed and spooled, the stopped window [5, 7) s ends where the pause begins: the
    spool's file goes (a restart pauses from the last chunk's end, 7 s)."""
    now = [0.0]
    rec = await paused_before_the_seal(tmp_path, now)
    await rec._spool(rec.chunker.seal())
    assert [p[:3] for p in pending(rec)] == [(0, 0, 5_000), (1, 5_000, 7_000)]
    assert unsaid_on_disk(tmp_path) == [] and not (tmp_path / "s" / "unsaid.json").exists()


async def test_a_resume_queued_behind_the_seal_stays_a_pause_after_a_crash(
        tmp_path: Path) -> None:
    """Paused at 7 s, resumed at 8 s while the stopped window still waits for its seal
    (the resume queued); the container dies at 9 s and restarts recording at 20 s. The
    pause [7, 8) s stays cut (a marker at 8 s carries it), the lost time silence. Before,
    the queued resume lived in memory only: `recorder-restart` [5, 20) s, the pause
    played as silence."""
    now = [0.0]
    rec = await paused_before_the_seal(tmp_path, now)
    now[0] = 8.0
    rec.kube.paused = False
    await rec._follow_pause(400)
    await record(rec, 400, 450)
    assert unsaid_on_disk(tmp_path) == [Gap(start_ms=5_000, end_ms=7_000, cause=RESTART),
                                        Gap(start_ms=7_000, end_ms=8_000, cause=PAUSED)]
    now[0] = 20.0
    rec = await restarted(tmp_path, now, paused=False)
    await record(rec, 1_000, 1_000 + WINDOW)
    await rec._spool(rec.chunker.seal())
    assert pending(rec) == [
        (0, 0, 5_000, None, 1),
        (1, 6_980, 7_000, Gap(start_ms=5_000, end_ms=6_980, cause=RESTART), 0),
        (2, 8_000, 8_020, Gap(start_ms=7_000, end_ms=8_000, cause=PAUSED), 0),
        (3, 20_000, 25_000, Gap(start_ms=8_020, end_ms=20_000, cause=RESTART), 1)]


async def test_a_queued_resume_sealed_and_spooled_keeps_the_pause_until_carried(
        tmp_path: Path) -> None:
    """The same queued resume, and then the stopped window [5, 7) s is sealed and
    spooled: the file holds the pause [7, 8) s alone (the resumed window's gap, as
    before), and once that window is spooled, nothing."""
    now = [0.0]
    rec = await paused_before_the_seal(tmp_path, now)
    now[0] = 8.0
    rec.kube.paused = False
    await rec._follow_pause(400)
    await rec._spool(rec.chunker.seal())
    assert unsaid_on_disk(tmp_path) == [Gap(start_ms=7_000, end_ms=8_000, cause=PAUSED)]
    await record(rec, 400, 400 + WINDOW)
    await rec._spool(rec.chunker.seal())
    assert pending(rec)[-1] == (
        2, 8_000, 13_000, Gap(start_ms=7_000, end_ms=8_000, cause=PAUSED), 1)
    assert unsaid_on_disk(tmp_path) == []


def test_unsaid_now_adds_a_pause_only_while_paused() -> None:
    """`gaps.unsaid_now`: a stop not sealed yet while not paused (the end of a run) adds
    its window as `recorder-restart` time and no pause; paused with everything sealed,
    nothing is added (the last chunk, or the unsaid gaps, end where the pause began)."""
    lost = [Gap(start_ms=4_000, end_ms=5_000, cause="connection-lost")]
    assert unsaid_now(lost, [(250, None, 350)], paused=False) == [
        *lost, Gap(start_ms=5_000, end_ms=7_000, cause=RESTART)]
    assert unsaid_now(lost, [], paused=True) == lost
    resumed = Gap(start_ms=5_000, end_ms=6_000, cause=PAUSED)
    assert unsaid_now([], [(300, resumed, None)], paused=False) == [resumed]


async def test_a_failed_write_at_the_pause_keeps_the_lost_window(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review rev-rec fault 1: chunk 0 spooled, the window [5, 10) s dropped (spool full:
    `unsaid.json` says connection-lost [5, 10) s), a pause at 12 s whose write of
    `unsaid.json` fails (ENOSPC), and the container dies before the stopped window is
    sealed. A failed write removed the file, so the restart paused from chunk 0's end and
    cut [5, 100) s: the lost window was cut, not silence. The old file is kept now: the
    lost window stays silence and the cut starts at its end (the pause's real start at
    12 s is what the failed write would have said). Failed before."""
    import errno

    from tests.unit.test_recorder_unsaid_restart import drop
    from voicetrack_recorder import unsaid_file

    now = [12.0]
    rec = five_s(tmp_path, now)
    rec.chunker.open(0)
    await record(rec, 0, WINDOW)
    await rec._spool(rec.chunker.seal())
    await record(rec, WINDOW, 2 * WINDOW)
    await drop(rec)
    await record(rec, 2 * WINDOW, 600)

    def no_space(*_: object, **__: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(unsaid_file, "write_owned", no_space)
    rec.kube.paused = True
    await rec._follow_pause(600)
    monkeypatch.undo()
    now[0] = 13.0
    again = await restarted(tmp_path, now, paused=True)
    await resume_and_seal(again, now)
    gaps = [(g.start_ms, g.end_ms, g.cause) for *_, g, _ in pending(again) if g]
    # the lost window is silence (its last 20 ms the marker chunk that carries it)
    assert gaps == [(5_000, 9_980, "connection-lost"), (10_000, 100_000, PAUSED)]
