"""What a dropped window leaves unsaid outlives a container restart (audio-timeline fault).

A window dropped while the spool is full waits, as a `connection-lost` gap, for the next
chunk spooled to carry it (`Recorder._unsaid`, `gaps.unsaid`). It lived in memory only: a
container restarted while paused (a crash, an OOM kill, a failed liveness probe) took the
pause to start at the last chunk on disk, so the dropped window was cut from the output as
paused time and everything after it moved earlier. Now the unsaid gaps are kept in the
spool (`unsaid.json`, written atomically) and the restarted run carries them with their
own causes; a file of another session, meeting or guild, not JSON, not contiguous, or not
following the session's last chunk is removed with a warning, never trusted.

Real Spool and libopus (`recorder_rig`); the Kubernetes client points at a loopback port
nothing listens on, so the session's RecordingChunks (none here: chunk 0 is still in the
spool) are handed to `prepare` in place of the API's list.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tests.unit.recorder_rig import GUILD, LAYOUT, recorder_at, sine_packet
from voicetrack.chunkspec import ChunkSpec, Gap
from voicetrack.layout import MeetingLayout
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.gaps import follow
from voicetrack_recorder.recorder import Recorder
from voicetrack_recorder.spool import Spool

pytestmark = pytest.mark.unit

WINDOW = 250
"""Slots of a 5 s chunk."""
UNSAID = "unsaid.json"
"""Where the spool keeps the unsaid gaps (`voicetrack_recorder.spool.UNSAID_FILE`)."""
SPEAKER = "200000000000000001"


def five_s(tmp_path: Path, now_s: list[float]) -> Recorder:
    """The rig's recorder of 5 s chunks on the spool `tmp_path/s`, its session clock at
    `now_s[0]` seconds (mutable)."""
    return recorder_at(tmp_path, SessionClock(0, time_fn=lambda: now_s[0]), chunkSeconds=5)


async def record(rec: Recorder, start: int, stop: int) -> None:
    """A tone in slots [start, stop) of the open window."""
    packet = sine_packet()
    for slot in range(start, stop):
        assert rec.push(SPEAKER, slot, packet)


async def drop(rec: Recorder) -> None:
    """Seal the open window and spool it while the spool is full (its bound 0 bytes)."""
    spool = rec.uploader.spool
    bound, spool.max_bytes = spool.max_bytes, 0
    try:
        await rec._spool(rec.chunker.seal())
    finally:
        spool.max_bytes = bound


async def restarted(tmp_path: Path, now_s: list[float], paused: bool,
                    existing: list[ChunkSpec] | None = None) -> Recorder:
    """The next container's run on the same spool: `prepare` with the session's
    RecordingChunks `existing` (default none), started paused or not."""
    rec = five_s(tmp_path, now_s)
    rec.kube.paused = paused
    rec.kube.list_chunks = lambda: list(existing or [])  # type: ignore[method-assign]
    await rec.prepare()
    return rec


async def resume_and_seal(rec: Recorder, now_s: list[float], slot: int = 5_000) -> None:
    """Resumed at 100 s (the session clock), at `slot`; a window of tone recorded from
    there, sealed and spooled."""
    now_s[0] = 100.0
    rec.kube.paused = False
    await rec._follow_pause(slot)
    await record(rec, slot, slot + WINDOW)
    await rec._spool(rec.chunker.seal())


def pending(rec: Recorder) -> list[tuple[int, int, int, Gap | None, int]]:
    """(index, startMs, endMs, gap, tracks) of each chunk spooled and not uploaded."""
    return [(s.spec.index, s.spec.start_ms, s.spec.end_ms, s.spec.gap, len(s.spec.tracks))
            for s in rec._pending]


async def paused_after_a_dropped_window(tmp_path: Path, now: list[float]) -> Recorder:
    """Chunk 0 [0, 5) s spooled (S3 away: not uploaded); the window [5, 7) s, sealed at a
    pause at 7 s, dropped (the spool full); still paused."""
    rec = five_s(tmp_path, now)
    rec.chunker.open(0)
    await record(rec, 0, WINDOW)
    await rec._spool(rec.chunker.seal())
    await record(rec, WINDOW, 350)
    rec.kube.paused = True
    await rec._follow_pause(350)
    await drop(rec)
    assert pending(rec) == [(0, 0, 5_000, None, 1)]
    assert rec._unsaid == [Gap(start_ms=5_000, end_ms=7_000, cause="connection-lost")]
    return rec


async def test_a_restart_while_paused_keeps_the_dropped_window_before_the_pause(
        tmp_path: Path) -> None:
    """The container restarts while paused (no stop path runs); the next run resumes at
    100 s. The dropped window [5, 7) s stays `connection-lost` (silence, carried by a
    marker on its last 20 ms) and the pause [7, 100) s `paused` (cut). Before, the
    restarted run paused from chunk 0's end: one `paused` gap [5, 100) s cut the lost
    window from the output, moving everything after it 2 s early."""
    now = [60.0]
    await paused_after_a_dropped_window(tmp_path, now)
    assert (tmp_path / "s" / UNSAID).exists()
    rec = await restarted(tmp_path, now, paused=True)
    await resume_and_seal(rec, now)
    assert pending(rec) == [
        (0, 0, 5_000, None, 1),
        (1, 6_980, 7_000, Gap(start_ms=5_000, end_ms=6_980, cause="connection-lost"), 0),
        (2, 100_000, 105_000, Gap(start_ms=7_000, end_ms=100_000, cause="paused"), 1)]
    assert not (tmp_path / "s" / UNSAID).exists()  # carried: nothing unsaid is left


async def test_a_restart_not_paused_keeps_a_pause_among_dropped_windows_a_pause(
        tmp_path: Path) -> None:
    """Chunk 0, then [5, 7) s dropped at a pause, the pause [7, 30) s, and [30, 35) s
    dropped after the resume; the container restarts at 60 s, recording. The pause stays
    `paused` and the lost windows `connection-lost`, and the time the recorder was down
    `recorder-restart`. Before, one `recorder-restart` gap [5, 60) s made the 23 s pause
    silence."""
    now = [30.0]
    rec = await paused_after_a_dropped_window(tmp_path, now)
    rec.kube.paused = False
    await rec._follow_pause(1_500)
    await record(rec, 1_500, 1_500 + WINDOW)
    await drop(rec)
    now[0] = 60.0
    rec = await restarted(tmp_path, now, paused=False)
    await record(rec, 3_000, 3_000 + WINDOW)
    await rec._spool(rec.chunker.seal())
    lost, pause = "connection-lost", "paused"
    assert pending(rec) == [
        (0, 0, 5_000, None, 1),
        (1, 6_980, 7_000, Gap(start_ms=5_000, end_ms=6_980, cause=lost), 0),
        (2, 30_000, 30_020, Gap(start_ms=7_000, end_ms=30_000, cause=pause), 0),
        (3, 34_980, 35_000, Gap(start_ms=30_020, end_ms=34_980, cause=lost), 0),
        (4, 60_000, 65_000, Gap(start_ms=35_000, end_ms=60_000, cause="recorder-restart"), 1)]


def unsaid_doc(**change: object) -> dict[str, object]:
    """unsaid.json as the spool writes it for session `standup` of LAYOUT's meeting."""
    return {"sessionName": "standup", "meetingId": LAYOUT.meeting_id, "guildId": GUILD,
            "gaps": [{"startMs": 5_000, "endMs": 6_000, "cause": "paused"},
                     {"startMs": 6_000, "endMs": 7_000, "cause": "connection-lost"}],
            **change}


@pytest.mark.parametrize("damage", [
    "not json", "other meeting", "other session", "hole between gaps", "off the grid",
    "no gaps", "one cause twice in a row", "nested past the recursion limit"])
def test_an_unsaid_file_that_is_not_this_sessions_is_removed_not_trusted(
        tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    """One damage each: the new Spool removes the file with a warning and adopts no gap
    (a forged file is never trusted; before, two adjacent gaps of one cause, which
    `gaps.carry` takes for a pause and what follows it, were adopted, and JSON nested past
    the parser's recursion limit raised RecursionError out of the Spool)."""
    root = tmp_path / "s"
    root.mkdir()
    text = {"not json": '{"sessionName": "standup", "gaps": [',
            "other meeting": json.dumps(unsaid_doc(meetingId="0123456789abcdef")),
            "other session": json.dumps(unsaid_doc(sessionName="retro")),
            "hole between gaps": json.dumps(unsaid_doc(gaps=[
                {"startMs": 5_000, "endMs": 6_000, "cause": "paused"},
                {"startMs": 6_020, "endMs": 7_000, "cause": "connection-lost"}])),
            "off the grid": json.dumps(unsaid_doc(gaps=[
                {"startMs": 5_000, "endMs": 6_001, "cause": "paused"}])),
            "no gaps": json.dumps(unsaid_doc(gaps=[])),
            "one cause twice in a row": json.dumps(unsaid_doc(gaps=[  # carry's two pauses
                {"startMs": 5_000, "endMs": 6_000, "cause": "paused"},
                {"startMs": 6_000, "endMs": 7_000, "cause": "paused"}])),
            "nested past the recursion limit": '{"gaps": ' + "[" * 200_000 + "]" * 200_000
            + "}"}[damage]
    (root / UNSAID).write_text(text)
    with caplog.at_level(logging.WARNING):
        spool = Spool(root, 1 << 30, LAYOUT, "standup")
    assert spool.unsaid == [] and not (root / UNSAID).exists()
    assert f"discarding {UNSAID}" in caplog.text


def test_an_unsaid_file_is_adopted_exactly_and_not_taken_for_a_chunk(tmp_path: Path) -> None:
    """What `save_unsaid` wrote comes back as it was, and chunk adoption leaves it alone;
    it counts in the spool's `used`; saving nothing removes it."""
    gaps = [Gap.model_validate(g) for g in unsaid_doc()["gaps"]]  # type: ignore[attr-defined]
    Spool(tmp_path / "s", 1 << 30, LAYOUT, "standup").save_unsaid(gaps)
    again = Spool(tmp_path / "s", 1 << 30, LAYOUT, "standup")
    assert again.unsaid == gaps and again.adopted == []
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [UNSAID]
    assert again.used == (tmp_path / "s" / UNSAID).stat().st_size > 0  # in the bound
    again.save_unsaid(gaps[:1])
    assert again.used == (tmp_path / "s" / UNSAID).stat().st_size
    again.save_unsaid([])
    assert not any((tmp_path / "s").iterdir()) and again.used == 0
    other = MeetingLayout(prefix="recordings", guild_id=GUILD, meeting_id="0123456789abcdef")
    Spool(tmp_path / "s", 1 << 30, LAYOUT, "standup").save_unsaid(gaps)
    assert Spool(tmp_path / "s", 1 << 30, other, "standup").unsaid == []


def test_an_unsaid_file_that_cannot_be_written_is_kept_and_capture_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Writing `unsaid.json` fails (its temporary file's path is a directory: an OSError
    even as root): `save_unsaid` raises nothing (the capture loop goes on), logs it, and
    keeps the older file as it was: what it says stays true (review rev-rec: removing it
    made a restart forget a lost window that a later pause then cut). The next call
    writes again. When `unsaid.json` itself is a directory, it is removed (a new Spool
    removes it too). Before, removing it raised IsADirectoryError out of the capture
    loop."""
    gaps = [Gap.model_validate(g) for g in unsaid_doc()["gaps"]]  # type: ignore[attr-defined]
    root = tmp_path / "s"
    spool = Spool(root, 1 << 30, LAYOUT, "standup")
    spool.save_unsaid(gaps[:1])
    size = (root / UNSAID).stat().st_size
    (root / f"{UNSAID}.tmp").mkdir()
    with caplog.at_level(logging.WARNING):
        spool.save_unsaid(gaps)
    assert spool.used == size and f"{UNSAID} not rewritten" in caplog.text
    assert Spool(root, 1 << 30, LAYOUT, "standup").unsaid == gaps[:1]  # as it was
    assert not (root / f"{UNSAID}.tmp").exists()  # the failed write's leftovers removed
    spool.save_unsaid(gaps)  # written again once it can be
    assert Spool(root, 1 << 30, LAYOUT, "standup").unsaid == gaps
    (root / UNSAID).unlink()
    (root / UNSAID).mkdir()
    spool.save_unsaid(gaps[:1])  # os.replace onto a directory fails
    assert not (root / UNSAID).exists() and spool.used == 0
    (root / UNSAID).mkdir()
    with caplog.at_level(logging.WARNING):
        assert Spool(root, 1 << 30, LAYOUT, "standup").unsaid == []
    assert not any(root.iterdir())


@pytest.mark.parametrize(("end_ms", "kept"), [
    (None, [(5_000, 6_000, "paused"), (6_000, 7_000, "connection-lost")]),
    (5_000, [(5_000, 6_000, "paused"), (6_000, 7_000, "connection-lost")]),
    (6_020, [(6_020, 7_000, "connection-lost")]),
    (4_980, []),
    (7_000, []),
    (9_000, [])])
def test_unsaid_gaps_follow_the_last_chunk_or_are_dropped(
        end_ms: int | None, kept: list[tuple[int, int, str]]) -> None:
    """`gaps.follow`: kept from the last chunk's end; a hole before them, or a chunk that
    ends at or after their end (it carried them), drops them."""
    gaps = [Gap.model_validate(g) for g in unsaid_doc()["gaps"]]  # type: ignore[attr-defined]
    assert [(g.start_ms, g.end_ms, g.cause) for g in follow(gaps, end_ms)] == kept


async def test_unsaid_gaps_a_restart_finds_not_following_are_discarded(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The session's RecordingChunk 0 ends at 9 s, after the unsaid gaps (a chunk carried
    them, the run ended before the file went): they are discarded with a warning and the
    restart gap starts at 9 s."""
    now = [60.0]
    await paused_after_a_dropped_window(tmp_path, now)
    chunk0 = Spool(tmp_path / "t", 1 << 30, LAYOUT, "standup").marker_spec(0, 8_980, 9_000, [],
                                                                             None)
    with caplog.at_level(logging.WARNING):
        rec = await restarted(tmp_path, now, paused=False, existing=[chunk0])
    assert rec._unsaid == [] and not (tmp_path / "s" / UNSAID).exists()
    assert "do not follow" in caplog.text
    assert rec.chunker.gap == Gap(start_ms=9_000, end_ms=60_000, cause="recorder-restart")
