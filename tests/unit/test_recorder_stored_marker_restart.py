"""A consent marker stored in S3 only is said, and a restarted container follows it.

When the API server refuses the consent marker (403 while the namespace terminates) or
stays away past the deadline, its spec is stored in S3 (`ChunkUploader.store_marker_spec`)
and the operator's inventory rebuilds the chunk from it. Before, that marker counted for
nothing in the spool: the gaps it carried stayed in `unsaid.json`, and its index was known
nowhere a restarted container reads (the recorder cannot list S3). After a restart in the
same pod (`source-failed`, `clock-stepped`, a crash) the next run created its own chunk at
the same index, over the marker's window, carrying those gaps again: two specs for one
index, a pause or lost window counted twice. Now the stored marker is kept in the spool
(`stored-marker.json`, `voicetrack_recorder.marker_file`) and the gaps it carried are
trimmed as when the API takes it.

Real Spool and libopus (`recorder_rig`); the API server's chunks are handed to `prepare`,
the marker create refused and the S3 store taken by stand-ins.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tests.unit.recorder_rig import GUILD, recorder_at, sine_packet
from voicetrack.chunkspec import ChunkSpec, Gap
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.recorder import Recorder

pytestmark = pytest.mark.unit

WINDOW = 250
"""Slots of a 5 s chunk."""
SPEAKER = "200000000000000001"
OUT = "400000000000000071"
"""The member who opts out while nothing is recorded."""
LOST, PAUSE = "connection-lost", "paused"
MARKER = "stored-marker.json"
"""Where the spool keeps the marker stored in S3 only (`marker_file.MARKER_FILE`)."""


def chunk0() -> ChunkSpec:
    """The session's RecordingChunk 0, [0, 5) s, created before the first run's end."""
    return ChunkSpec(session_name="standup", meeting_id="abcdef0123456789", guild_id=GUILD,
                     index=0, start_ms=0, end_ms=5_000)


async def run(tmp_path: Path, now_s: list[float], paused: bool,
              existing: list[ChunkSpec]) -> tuple[Recorder, list[ChunkSpec]]:
    """A container's run on the spool `tmp_path/s` after `prepare` (the API server lists
    `existing`); its marker creates refused, its S3 stores listed in the list returned."""
    rec = recorder_at(tmp_path, SessionClock(0, time_fn=lambda: now_s[0]), chunkSeconds=5)
    rec.kube.paused = paused
    rec.kube.list_chunks = lambda: list(existing)  # type: ignore[method-assign]
    stored: list[ChunkSpec] = []

    def store(spec: ChunkSpec, deadline: object) -> bool:
        stored.append(spec)
        return True

    rec.uploader.create_marker = lambda spec, deadline: False  # type: ignore[method-assign]
    rec.uploader.store_marker_spec = store  # type: ignore[method-assign]
    await rec.prepare()
    return rec, stored


async def stop_with_an_opt_out(rec: Recorder) -> None:
    """`OUT` opts out (nothing records them), then the stop path's markers (the API away:
    the consent marker goes to S3)."""
    rec.push(OUT, 0, sine_packet())  # seen by consent (its frame kept or not)
    rec.kube.opt_out = (frozenset({OUT}), frozenset())
    rec.follow_consent()
    rec._give_up(deadline=0.0)
    rec._mark_consent(deadline=0.0)


def pending(rec: Recorder) -> list[tuple[int, int, int, Gap | None, int]]:
    """(index, startMs, endMs, gap, tracks) of each chunk spooled and not uploaded."""
    return [(s.spec.index, s.spec.start_ms, s.spec.end_ms, s.spec.gap, len(s.spec.tracks))
            for s in rec._pending]


async def resume_and_spool(rec: Recorder, now_s: list[float], at_s: float) -> None:
    """Resume at `at_s` seconds and spool one 5 s window of tone."""
    now_s[0] = at_s
    rec.kube.paused = False
    slot = int(at_s * 50)
    await rec._follow_pause(slot)
    packet = sine_packet()
    for s in range(slot, slot + WINDOW):
        assert rec.push(SPEAKER, s, packet)
    await rec._spool(rec.chunker.seal())


async def test_a_restart_after_a_stored_consent_marker_continues_after_it(
        tmp_path: Path) -> None:
    """Paused at 5 s after chunk 0; a member opts out while paused; the source fails: the
    consent marker, chunk 1 [5, 5.02) s, is stored in S3. The restarted container starts
    at chunk 2, after the marker (its pause starts at 5.02 s) with the marker's optedOut as
    the last word. Before: it reused index 1 over the marker's window, its pause from 5 s."""
    now = [6.0]
    rec, stored = await run(tmp_path, now, paused=True, existing=[chunk0()])
    await stop_with_an_opt_out(rec)
    assert [(s.index, s.start_ms, s.end_ms) for s in stored] == [(1, 5_000, 5_020)]
    again, stored = await run(tmp_path, now, paused=True, existing=[chunk0()])
    assert again.chunker.next_index == 2
    assert again._last is not None and again._last[0] == 5_020
    assert [o.user_id for o in again._last[1]] == [OUT]
    await resume_and_spool(again, now, 100.0)
    assert pending(again) == [
        (2, 100_000, 105_000, Gap(start_ms=5_020, end_ms=100_000, cause=PAUSE), 1)]
    again._mark_consent(deadline=0.0)  # the opt-out was said: no second consent marker
    assert stored == []
    third, _ = await run(tmp_path, now, paused=False, existing=[chunk0()])  # a crash
    assert pending(third) == [  # adopted: it follows the stored marker
        (2, 100_000, 105_000, Gap(start_ms=5_020, end_ms=100_000, cause=PAUSE), 1)]
    assert third.chunker.next_index == 3


async def test_a_stored_consent_marker_trims_the_gaps_it_carried(tmp_path: Path) -> None:
    """Chunk 0 created; the window [5, 7) s dropped (the spool full) at a pause; an opt-out
    while paused; the source fails with the API away: the lost window's marker is not made,
    and the consent marker, chunk 1 [5, 5.02) s, stored in S3. The window left unsaid
    (`unsaid.json`) then starts at 5.02 s, as when the API takes the marker; the restarted
    run carries it from there at chunk 2. Before: unsaid.json kept [5, 7) s and the next
    run's marker took index 1 again, its gap over the stored marker's window."""
    now = [5.0]
    rec, stored = await run(tmp_path, now, paused=False, existing=[chunk0()])
    packet = sine_packet()
    for slot in range(WINDOW, 350):
        assert rec.push(SPEAKER, slot, packet)
    now[0] = 7.0
    rec.kube.paused = True
    await rec._follow_pause(350)
    spool = rec.uploader.spool
    bound, spool.max_bytes = spool.max_bytes, 0
    await rec._spool(rec.chunker.seal())  # dropped: the spool full
    spool.max_bytes = bound
    await stop_with_an_opt_out(rec)
    assert [(s.index, s.start_ms, s.end_ms) for s in stored] == [(1, 5_000, 5_020)]
    left = [Gap(start_ms=5_020, end_ms=7_000, cause=LOST)]
    assert rec._unsaid == left
    doc = json.loads((tmp_path / "s" / "unsaid.json").read_bytes())
    assert [Gap.model_validate(g) for g in doc["gaps"]] == left
    again, stored = await run(tmp_path, now, paused=True, existing=[chunk0()])
    assert again.chunker.next_index == 2 and again._unsaid == left
    await resume_and_spool(again, now, 100.0)
    assert pending(again) == [
        (2, 6_980, 7_000, Gap(start_ms=5_020, end_ms=6_980, cause=LOST), 0),
        (3, 100_000, 105_000, Gap(start_ms=7_000, end_ms=100_000, cause=PAUSE), 1)]


def stored_marker(tmp_path: Path, **doc: object) -> ChunkSpec:
    """Write `stored-marker.json` in the spool `tmp_path/s` as a previous run would have
    for marker chunk 1 [5, 5.02) s after `chunk0`, with the file's fields replaced by
    `doc`'s; returns the marker's spec."""
    marker = ChunkSpec(session_name="standup", meeting_id="abcdef0123456789",
                       guild_id=GUILD, index=1, start_ms=5_000, end_ms=5_020)
    root = tmp_path / "s"
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text(json.dumps({
        "sessionName": "standup", "meetingId": "abcdef0123456789", "guildId": GUILD,
        "spec": marker.to_api(), **doc}))
    return marker


@pytest.mark.parametrize("doc", [
    {"sessionName": "other"}, {"meetingId": "0123456789abcdef"},
    {"spec": {"sessionName": "standup"}}, {"spec": []}])
async def test_a_stored_marker_file_not_this_sessions_marker_is_discarded(
        tmp_path: Path, doc: dict[str, object], caplog: pytest.LogCaptureFixture) -> None:
    """Another session's or meeting's file, or one without a chunk spec: removed with a
    warning, never trusted; the run continues after the API server's last chunk."""
    stored_marker(tmp_path, **doc)
    with caplog.at_level(logging.WARNING):
        rec, _ = await run(tmp_path, [6.0], paused=True, existing=[chunk0()])
    assert f"discarding {MARKER}" in caplog.text
    assert rec.chunker.next_index == 1 and not (tmp_path / "s" / MARKER).exists()


async def test_a_stored_marker_the_api_lists_or_not_following_is_forgotten(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Once the API server lists a chunk at the marker's index (the inventory made it, or
    a later run's chunk) the file is removed; a marker that does not follow the API
    server's last chunk (a chunk before it gone) is discarded with a warning."""
    marker = stored_marker(tmp_path)
    rec, _ = await run(tmp_path, [6.0], paused=True, existing=[chunk0(), marker])
    assert rec.chunker.next_index == 2 and not (tmp_path / "s" / MARKER).exists()
    stored_marker(tmp_path)
    with caplog.at_level(logging.WARNING):
        rec, _ = await run(tmp_path, [6.0], paused=True, existing=[])
    assert "does not follow" in caplog.text
    assert rec.chunker.next_index == 0 and not (tmp_path / "s" / MARKER).exists()


OUT2 = "400000000000000072"
"""A second member who opts out in the restarted run, also while nothing is recorded."""


async def test_two_markers_stored_in_s3_across_restarts_chain(tmp_path: Path) -> None:
    """Run 1 stores consent marker 1 [5, 5.02) s in S3; restarted while paused, run 2
    follows it (the API server still lists chunk 0 only); a second member opts out and run
    2 stores marker 2 [5.02, 5.04) s in S3 too. Run 3 (the API server still at chunk 0)
    continues after both: index 3, both opt-outs its last word, its pause from 5.04 s.
    Before: the file kept only marker 2, which does not follow chunk 0: discarded, so run 3
    reused index 1 (over marker 1 in S3) and took the opt-outs as none."""
    now = [6.0]
    rec, first = await run(tmp_path, now, paused=True, existing=[chunk0()])
    await stop_with_an_opt_out(rec)
    again, stored = await run(tmp_path, now, paused=True, existing=[chunk0()])
    assert again.chunker.next_index == 2
    again.push(OUT2, 0, sine_packet())
    again.kube.opt_out = (frozenset({OUT, OUT2}), frozenset())
    again.follow_consent()
    again._give_up(deadline=0.0)
    again._mark_consent(deadline=0.0)
    assert [(s.index, s.start_ms, s.end_ms) for s in stored] == [(2, 5_020, 5_040)]
    third, _ = await run(tmp_path, now, paused=True, existing=[chunk0()])
    assert third.chunker.next_index == 3
    assert third._last is not None and third._last[0] == 5_040
    assert sorted(o.user_id for o in third._last[1]) == [OUT, OUT2]
    await resume_and_spool(third, now, 100.0)
    assert pending(third) == [
        (3, 100_000, 105_000, Gap(start_ms=5_040, end_ms=100_000, cause=PAUSE), 1)]
    # the API server lists marker 1 now (the inventory made it): only marker 2 stays
    fourth, _ = await run(tmp_path, now, paused=True, existing=[chunk0(), first[0]])
    assert fourth.chunker.next_index == 4
    doc = json.loads((tmp_path / "s" / MARKER).read_bytes())
    assert [s["index"] for s in doc["specs"]] == [2]


async def test_a_marker_not_kept_in_the_spool_leaves_its_gaps_unsaid(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The consent marker is stored in S3 but `stored-marker.json` cannot be written (EIO,
    ENOSPC, EROFS): a restart cannot know the marker, so the pause it carried must stay in
    `unsaid.json` for the chunk that reuses its index to carry again. Before: the pause
    was trimmed anyway, and the restarted run's chunk 1 took it as silence (no gap)."""
    import errno

    import voicetrack_recorder.marker_file as marker_file

    def fail(path: Path, owner: object, body: object) -> int:
        raise OSError(errno.EIO, "I/O error", str(path))

    now = [6.0]
    rec, stored = await run(tmp_path, now, paused=True, existing=[chunk0()])
    rec._unsaid = [Gap(start_ms=5_000, end_ms=6_000, cause=PAUSE)]  # a pause from 5 s
    rec.uploader.spool.save_unsaid(rec._unsaid)
    monkeypatch.setattr(marker_file, "write_owned", fail)
    await stop_with_an_opt_out(rec)
    monkeypatch.undo()
    assert [(s.index, s.gap) for s in stored][:1] == [
        (1, Gap(start_ms=5_000, end_ms=6_000, cause=PAUSE))]
    assert not (tmp_path / "s" / MARKER).exists()
    doc = json.loads((tmp_path / "s" / "unsaid.json").read_bytes())
    assert Gap.model_validate(doc["gaps"][0]).start_ms == 5_000
    again, _ = await run(tmp_path, now, paused=True, existing=[chunk0()])
    assert again.chunker.next_index == 1
    assert again._unsaid[:1] == [Gap(start_ms=5_000, end_ms=6_000, cause=PAUSE)]


def marker(index: int, start_ms: int) -> ChunkSpec:
    """Marker chunk `index`, the 20 ms from `start_ms`."""
    return ChunkSpec(session_name="standup", meeting_id="abcdef0123456789", guild_id=GUILD,
                     index=index, start_ms=start_ms, end_ms=start_ms + 20)


def stored_markers(tmp_path: Path, specs: list[ChunkSpec]) -> None:
    """Write `stored-marker.json` holding `specs` in the spool `tmp_path/s`."""
    root = tmp_path / "s"
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text(json.dumps({
        "sessionName": "standup", "meetingId": "abcdef0123456789", "guildId": GUILD,
        "specs": [s.to_api() for s in specs]}))


async def test_a_stored_marker_chain_is_followed_as_far_as_it_follows(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Markers 1, 2 and 4 kept: 1 and 2 follow chunk 0, 4 does not follow 2 (a marker
    between gone): the run continues after 2, and the file keeps 1 and 2 only."""
    stored_markers(tmp_path, [marker(1, 5_000), marker(2, 5_020), marker(4, 5_060)])
    with caplog.at_level(logging.WARNING):
        rec, _ = await run(tmp_path, [6.0], paused=True, existing=[chunk0()])
    assert "chunk 4 [5060, 5080) ms" in caplog.text and "does not follow" in caplog.text
    assert rec.chunker.next_index == 3
    doc = json.loads((tmp_path / "s" / MARKER).read_bytes())
    assert [s["index"] for s in doc["specs"]] == [1, 2]


@pytest.mark.parametrize("specs", [[(2, 5_020), (1, 5_000)], [(1, 5_000), (1, 5_000)]])
async def test_stored_markers_not_in_index_order_are_discarded(
        tmp_path: Path, specs: list[tuple[int, int]], caplog: pytest.LogCaptureFixture
        ) -> None:
    """A file whose indexes do not increase was not written by a recorder: removed."""
    stored_markers(tmp_path, [marker(i, s) for i, s in specs])
    with caplog.at_level(logging.WARNING):
        rec, _ = await run(tmp_path, [6.0], paused=True, existing=[chunk0()])
    assert f"discarding {MARKER}" in caplog.text
    assert rec.chunker.next_index == 1 and not (tmp_path / "s" / MARKER).exists()


async def test_a_marker_past_the_bound_is_not_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
        ) -> None:
    """The spool keeps at most `MAX_STORED_MARKERS` (1 here): run 2's marker 2 is stored
    in S3 but not kept; run 3 continues after marker 1 (kept), reusing index 2."""
    import voicetrack_recorder.marker_file as marker_file
    import voicetrack_recorder.spool as spool

    monkeypatch.setattr(marker_file, "MAX_STORED_MARKERS", 1)
    monkeypatch.setattr(spool, "MAX_STORED_MARKERS", 1)
    now = [6.0]
    rec, _ = await run(tmp_path, now, paused=True, existing=[chunk0()])
    await stop_with_an_opt_out(rec)
    again, stored = await run(tmp_path, now, paused=True, existing=[chunk0()])
    again.push(OUT2, 0, sine_packet())
    again.kube.opt_out = (frozenset({OUT, OUT2}), frozenset())
    again.follow_consent()
    again._give_up(deadline=0.0)
    with caplog.at_level(logging.WARNING):
        again._mark_consent(deadline=0.0)
    assert [s.index for s in stored] == [2] and "holds 1 markers already" in caplog.text
    third, _ = await run(tmp_path, now, paused=True, existing=[chunk0()])
    assert third.chunker.next_index == 2
    assert third._last is not None and [o.user_id for o in third._last[1]] == [OUT]


def _no_space(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every atomic spool write fails as on a full emptyDir (ENOSPC on the temp file)."""
    import errno

    import voicetrack_recorder.unsaid_file as unsaid_file

    def fail(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(unsaid_file, "write_atomic", fail)


async def test_a_later_markers_failed_write_keeps_the_markers_kept_before(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run 1 keeps marker 1; run 2 stores marker 2 in S3 but the spool is full: the file
    must still hold marker 1, so run 3 continues after it (index 2, marker 2's, is reused:
    it was never kept). Before, the failed write removed the file, and run 3 reused index
    1 and took the opt-out as none (third review)."""
    now = [6.0]
    rec, first = await run(tmp_path, now, paused=True, existing=[chunk0()])
    await stop_with_an_opt_out(rec)
    assert [s.index for s in first] == [1]
    again, stored = await run(tmp_path, now, paused=True, existing=[chunk0()])
    assert again.chunker.next_index == 2
    again.push(OUT2, 0, sine_packet())
    again.kube.opt_out = (frozenset({OUT, OUT2}), frozenset())
    again.follow_consent()
    again._give_up(deadline=0.0)
    _no_space(monkeypatch)
    again._mark_consent(deadline=0.0)
    monkeypatch.undo()
    assert [s.index for s in stored] == [2]
    doc = json.loads((tmp_path / "s" / MARKER).read_bytes())
    assert [s["index"] for s in doc["specs"]] == [1]
    assert again.uploader.spool.stored_markers == [first[0]]
    assert not (tmp_path / "s" / f"{MARKER}.tmp").exists()
    third, _ = await run(tmp_path, now, paused=True, existing=[chunk0()])
    assert third.chunker.next_index == 2
    assert third._last is not None and [o.user_id for o in third._last[1]] == [OUT]


async def test_a_failed_rewrite_at_start_keeps_the_chain(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file holds markers 1 and 2, the API server lists 1: the start-up rewrite to [2]
    fails (spool full). The file stays as it was, so the next restart still continues
    after marker 2; before, it was removed and the next restart reused index 2."""
    m1, m2 = marker(1, 5_000), marker(2, 5_020)
    stored_markers(tmp_path, [m1, m2])
    _no_space(monkeypatch)
    rec, _ = await run(tmp_path, [6.0], paused=True, existing=[chunk0(), m1])
    monkeypatch.undo()
    assert rec.chunker.next_index == 3
    assert (tmp_path / "s" / MARKER).exists()
    again, _ = await run(tmp_path, [6.0], paused=True, existing=[chunk0(), m1])
    assert again.chunker.next_index == 3


async def test_a_marker_kept_after_a_failed_rewrite_at_start_follows_the_chain(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file holds markers 1, 2 and 4 (4 does not follow 2: a marker between gone);
    the start-up rewrite to the chain [1, 2] fails (spool full), so the file stays as it
    was. The run then stores consent marker 3 [5.04, 5.06) s in S3 with the spool
    writable again: the file holds the chain and it, [1, 2, 3], and the next restart
    continues after marker 3 with its opt-out. Before, the spool kept [1, 2, 4] in memory
    too and wrote [1, 2, 4, 3]: the next read refused the whole file (indexes not
    increasing), so that restart reused index 1 and took the opt-out as none."""
    stored_markers(tmp_path, [marker(1, 5_000), marker(2, 5_020), marker(4, 5_060)])
    _no_space(monkeypatch)
    now = [6.0]
    rec, stored = await run(tmp_path, now, paused=True, existing=[chunk0()])
    monkeypatch.undo()
    assert rec.chunker.next_index == 3
    doc = json.loads((tmp_path / "s" / MARKER).read_bytes())
    assert [s["index"] for s in doc["specs"]] == [1, 2, 4]  # not rewritten
    assert [m.index for m in rec.uploader.spool.stored_markers] == [1, 2]
    assert rec.uploader.spool.used == (tmp_path / "s" / MARKER).stat().st_size
    await stop_with_an_opt_out(rec)
    assert [(s.index, s.start_ms, s.end_ms) for s in stored] == [(3, 5_040, 5_060)]
    doc = json.loads((tmp_path / "s" / MARKER).read_bytes())
    assert [s["index"] for s in doc["specs"]] == [1, 2, 3]
    assert rec.uploader.spool.used == (tmp_path / "s" / MARKER).stat().st_size
    again, _ = await run(tmp_path, now, paused=True, existing=[chunk0()])
    assert again.chunker.next_index == 4
    assert again._last is not None and again._last[0] == 5_060
    assert [o.user_id for o in again._last[1]] == [OUT]
