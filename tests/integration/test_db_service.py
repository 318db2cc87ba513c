"""The storage service on real PostgreSQL and SQLite: the same test bodies on both engines
(`db_service` is parametrized over `postgresql` and `sqlite`)."""

from __future__ import annotations

import asyncio
import hashlib
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from voicetrack.db.engine import create_engine
from voicetrack.db.migrate import upgrade_head
from voicetrack.db.schema import TempRecording, TranscodeStatus
from voicetrack.db.service import RecordingService
from voicetrack.errors import InvalidInputError, NotFoundError, TemporaryFailure
from voicetrack.manifests import FinalTrack
from voicetrack.resources import TRACKS_OPTIONS, TracksOption
from voicetrack_local.ports import free_port
from voicetrack_local.postgres import PostgresServer

pytestmark = pytest.mark.integration

MEETING = "m0eet1ng2id3abcd"
GUILD = "100000000000000001"
CHANNEL = "200000000000000002"
ALICE = "300000000000000003"
BOB = "300000000000000004"
SESSION_UID = "0b7c7a52-1d8e-4c3a-9d5e-5f6a7b8c9d0e"
T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def chunk_key(index: int, user: str, ext: str = "opus") -> str:
    return f"rec/{GUILD}/{MEETING}/chunks/{index:06d}/{user}.{ext}"


async def mirror(
    svc: RecordingService, index: int, user: str, status: str, **extra: Any
) -> TempRecording:
    if status == "done":
        extra.setdefault("mp3_path", chunk_key(index, user, "mp3"))
        extra.setdefault("sha256", sha(f"{index}-{user}"))
        extra.setdefault("duration_ms", 10_000)
    if status == "failed":
        extra.setdefault("error", "ffmpeg exited 1")
    return await svc.upsert_chunk_status(
        SESSION_UID, index, user, MEETING, GUILD, chunk_key(index, user), "ogg-opus", status,
        **extra,
    )


def final_tracks() -> list[FinalTrack]:
    prefix = f"rec/{GUILD}/{MEETING}/final"
    return [
        FinalTrack(
            track=user, kind="speaker", user_id=user, format="mp3", key=f"{prefix}/{user}.mp3",
            bytes=160_000 + i, sha256=sha(user), duration_ms=20_000,
        )
        for i, user in enumerate((ALICE, BOB))
    ] + [
        FinalTrack(
            track="mix", kind="mixed", format="mp3", key=f"{prefix}/mix.mp3", bytes=170_000,
            sha256=sha("mix"), duration_ms=20_000,
        )
    ]


async def test_meeting_create_is_idempotent_and_end(db_service: RecordingService) -> None:
    first = await db_service.create_meeting(MEETING, GUILD, CHANNEL, T0)
    again = await db_service.create_meeting(MEETING, GUILD, CHANNEL, T0 + timedelta(hours=1))
    assert (first.id, again.id) == (MEETING, MEETING)
    assert again.started_at == T0 and again.started_at.tzinfo is not None
    assert again.status == "recording" and again.ended_at is None
    with pytest.raises(InvalidInputError, match="already exists"):
        await db_service.create_meeting(MEETING, GUILD, "200000000000000999", T0)
    with pytest.raises(InvalidInputError, match="started_at"):
        await db_service.create_meeting("naivenaivenaive1", GUILD, CHANNEL, datetime(2026, 1, 1))
    with pytest.raises(InvalidInputError, match="meeting_id"):
        await db_service.create_meeting("short", GUILD, CHANNEL, T0)

    with pytest.raises(InvalidInputError, match="status"):
        await db_service.end_meeting(MEETING, T0 + timedelta(minutes=5), "exploded")
    with pytest.raises(InvalidInputError, match="before started_at"):
        await db_service.end_meeting(MEETING, T0 - timedelta(minutes=5), "completed")
    with pytest.raises(NotFoundError):
        await db_service.end_meeting("unknownmeeting00", T0, "completed")
    assert (await db_service.get_meeting(MEETING)).status == "recording"
    # An ended_at in another zone is stored as the same instant, returned in UTC.
    cet = datetime(2026, 11, 22, 11, 30, tzinfo=UTC).astimezone(
        datetime.now().astimezone().tzinfo
    )
    ended = await db_service.end_meeting(MEETING, cet, "completed")
    assert ended.status == "completed"
    assert ended.ended_at == datetime(2026, 11, 22, 11, 30, tzinfo=UTC)
    assert ended.ended_at.utcoffset() == timedelta(0)


async def test_temp_recording_lifecycle(db_service: RecordingService) -> None:
    await db_service.create_meeting(MEETING, GUILD, CHANNEL, T0)
    row = await db_service.insert_temp_recording(
        MEETING, ALICE, GUILD, chunk_key(0, ALICE), chunk_index=0, raw_format="ogg-opus"
    )
    assert len(row.id) == 16 and row.transcode_status is TranscodeStatus.QUEUED
    assert row.cleaned == 0 and row.completed_at is None and row.created_at.tzinfo is not None

    started = await db_service.update_temp_recording_transcode_started(row.id, "s-tx-000000")
    assert started.transcode_status is TranscodeStatus.IN_PROGRESS
    assert started.job_name == "s-tx-000000"

    done = await db_service.update_temp_recording_transcode_completed(
        row.id, chunk_key(0, ALICE, "mp3"), sha("a0"), 10_000
    )
    assert done.transcode_status is TranscodeStatus.DONE
    assert (done.mp3_path, done.sha256, done.duration_ms) == (
        chunk_key(0, ALICE, "mp3"), sha("a0"), 10_000,
    )
    assert done.completed_at is not None and done.completed_at >= done.created_at

    other = await db_service.insert_temp_recording(MEETING, BOB, GUILD, chunk_key(0, BOB))
    failed = await db_service.update_temp_recording_transcode_failed(other.id, "bad ogg page")
    assert failed.transcode_status is TranscodeStatus.FAILED and failed.error == "bad ogg page"

    rows = await db_service.get_temp_recordings_for_meeting(MEETING)
    assert {r.id for r in rows} == {row.id, other.id}

    assert await db_service.mark_temp_recording_cleaned(row.id) == 1
    assert (await db_service.get_temp_recording(row.id)).cleaned == 1
    assert (await db_service.get_temp_recording(other.id)).cleaned == 0

    assert await db_service.delete_temp_recordings(temp_ids=[other.id]) == 1
    assert [r.id for r in await db_service.get_temp_recordings_for_meeting(MEETING)] == [row.id]
    assert await db_service.delete_temp_recordings(MEETING) == 1
    assert await db_service.get_temp_recordings_for_meeting(MEETING) == []


async def test_status_updates_only_move_forward(db_service: RecordingService) -> None:
    await db_service.create_meeting(MEETING, GUILD, CHANNEL, T0)
    a = await db_service.insert_temp_recording(MEETING, ALICE, GUILD, chunk_key(0, ALICE))
    await db_service.update_temp_recording_transcode_completed(
        a.id, chunk_key(0, ALICE, "mp3"), sha("a"), 9_980
    )
    late = await db_service.update_temp_recording_transcode_started(a.id, "late-job")
    assert late.transcode_status is TranscodeStatus.DONE and late.job_name is None
    after_fail = await db_service.update_temp_recording_transcode_failed(a.id, "too late")
    assert after_fail.transcode_status is TranscodeStatus.DONE and after_fail.error is None
    assert after_fail.sha256 == sha("a")

    b = await db_service.insert_temp_recording(MEETING, BOB, GUILD, chunk_key(0, BOB))
    await db_service.update_temp_recording_transcode_failed(b.id, "decoder error")
    b_after = await db_service.update_temp_recording_transcode_completed(
        b.id, chunk_key(0, BOB, "mp3"), sha("b"), 1
    )
    assert b_after.transcode_status is TranscodeStatus.FAILED
    assert (b_after.mp3_path, b_after.sha256, b_after.error) == (None, None, "decoder error")


async def test_bad_input_is_typed_and_changes_nothing(db_service: RecordingService) -> None:
    await db_service.create_meeting(MEETING, GUILD, CHANNEL, T0)
    row = await db_service.insert_temp_recording(MEETING, ALICE, GUILD, chunk_key(0, ALICE))
    unknown = "ffffffffffffffff"

    with pytest.raises(NotFoundError, match="meeting"):
        await db_service.insert_temp_recording(unknown, ALICE, GUILD, chunk_key(0, ALICE))
    with pytest.raises(NotFoundError, match="meeting"):
        await db_service.get_temp_recordings_for_meeting(unknown)
    with pytest.raises(InvalidInputError, match="user_id"):
        await db_service.insert_temp_recording(MEETING, "alice", GUILD, chunk_key(0, ALICE))
    with pytest.raises(InvalidInputError, match="pcm_path"):
        await db_service.insert_temp_recording(MEETING, ALICE, GUILD, "x" * 513)
    for call in (
        db_service.update_temp_recording_transcode_started(unknown),
        db_service.update_temp_recording_transcode_completed(unknown, "k.mp3", sha("x"), 1),
        db_service.update_temp_recording_transcode_failed(unknown, "why"),
        db_service.mark_temp_recording_cleaned(unknown),
    ):
        with pytest.raises(NotFoundError, match="temp"):
            await call
    for bad_sha in ("", "ABC", sha("x").upper(), None):
        with pytest.raises(InvalidInputError, match="sha256"):
            await db_service.update_temp_recording_transcode_completed(
                row.id, "k.mp3", bad_sha, 1  # type: ignore[arg-type]
            )
    with pytest.raises(InvalidInputError, match="duration_ms"):
        await db_service.update_temp_recording_transcode_completed(row.id, "k.mp3", sha("x"), -1)
    with pytest.raises(InvalidInputError, match="reason"):
        await db_service.update_temp_recording_transcode_failed(row.id, "  ")
    # A batch holding one unknown id touches none of the known ones.
    with pytest.raises(NotFoundError, match=unknown):
        await db_service.mark_temp_recording_cleaned([row.id, unknown])
    with pytest.raises(NotFoundError, match=unknown):
        await db_service.delete_temp_recordings(temp_ids=[row.id, unknown])
    with pytest.raises(InvalidInputError, match="meeting_id or temp_ids"):
        await db_service.delete_temp_recordings()
    stored = await db_service.get_temp_recording(row.id)
    assert stored.transcode_status is TranscodeStatus.QUEUED
    assert (stored.cleaned, stored.sha256, stored.mp3_path, stored.error) == (0, None, None, None)


async def test_upsert_chunk_status_is_idempotent_and_forward_only(
    db_service: RecordingService,
) -> None:
    await db_service.create_meeting(MEETING, GUILD, CHANNEL, T0)
    first = await mirror(db_service, 3, ALICE, "queued")
    again = await mirror(db_service, 3, ALICE, "queued")
    assert first.id == again.id
    running = await mirror(db_service, 3, ALICE, "in_progress", job_name="s-tx-000003")
    assert running.transcode_status is TranscodeStatus.IN_PROGRESS
    done = await mirror(db_service, 3, ALICE, "done")
    assert done.transcode_status is TranscodeStatus.DONE
    assert done.job_name == "s-tx-000003"
    assert done.completed_at is not None
    for late in ("in_progress", "queued", "failed"):
        row = await mirror(db_service, 3, ALICE, late, job_name="other-job")
        assert row.transcode_status is TranscodeStatus.DONE
        assert row.job_name == "s-tx-000003"
        assert row.error is None
    # First sight of a chunk may already be terminal (operator catching up after an outage).
    failed = await mirror(db_service, 4, BOB, "failed")
    assert failed.transcode_status is TranscodeStatus.FAILED
    late_done = await mirror(db_service, 4, BOB, "done")
    assert late_done.transcode_status is TranscodeStatus.FAILED

    rows = await db_service.get_temp_recordings_for_meeting(MEETING)
    assert [(r.chunk_index, r.user_id) for r in rows] == [(3, ALICE), (4, BOB)]
    assert rows[0].pcm_path == chunk_key(3, ALICE) and rows[0].raw_format == "ogg-opus"

    with pytest.raises(InvalidInputError, match="sha256: required"):
        await mirror(db_service, 5, ALICE, "done", sha256=None)
    with pytest.raises(InvalidInputError, match="error: required"):
        await mirror(db_service, 5, ALICE, "failed", error=None)
    with pytest.raises(InvalidInputError, match="status"):
        await mirror(db_service, 5, ALICE, "finished")
    with pytest.raises(InvalidInputError, match="chunk_index"):
        await mirror(db_service, -1, ALICE, "queued")
    with pytest.raises(NotFoundError, match="meeting"):
        await db_service.upsert_chunk_status(
            SESSION_UID, 5, ALICE, "ffffffffffffffff", GUILD, chunk_key(5, ALICE),
            "ogg-opus", "queued",
        )
    assert len(await db_service.get_temp_recordings_for_meeting(MEETING)) == 2


async def test_a_done_chunk_left_out_of_its_promotion_goes_to_failed_once(
    db_service: RecordingService,
) -> None:
    """`fail_done_chunk`: the one way back from done (a chunk whose raw object turned out
    bad at promotion), for that chunk's done rows only, and only once."""
    await db_service.create_meeting(MEETING, GUILD, CHANNEL, T0)
    for user in (ALICE, BOB):
        await mirror(db_service, 3, user, "done")
    await mirror(db_service, 4, ALICE, "done")
    await mirror(db_service, 5, ALICE, "in_progress")
    assert await db_service.fail_done_chunk(SESSION_UID, 3, "left out: sha256 mismatch") == 2
    assert await db_service.fail_done_chunk(SESSION_UID, 3, "again") == 0  # a repeat
    assert await db_service.fail_done_chunk(SESSION_UID, 5, "not done") == 0
    assert await db_service.fail_done_chunk("another-session", 4, "not its") == 0
    rows = {(r.chunk_index, r.user_id): r
            for r in await db_service.get_temp_recordings_for_meeting(MEETING)}
    for user in (ALICE, BOB):
        assert rows[(3, user)].transcode_status is TranscodeStatus.FAILED
        assert rows[(3, user)].error == "left out: sha256 mismatch"
        assert rows[(3, user)].mp3_path == chunk_key(3, user, "mp3")  # what was made stays
    assert rows[(4, ALICE)].transcode_status is TranscodeStatus.DONE
    assert rows[(5, ALICE)].transcode_status is TranscodeStatus.IN_PROGRESS
    # the mirror never moves it back to done
    again = await mirror(db_service, 3, ALICE, "done")
    assert again.transcode_status is TranscodeStatus.FAILED


@pytest.mark.parametrize("with_failed", [False, True], ids=["done-wins", "first-terminal-wins"])
async def test_twenty_concurrent_writers_on_one_chunk(
    db_service: RecordingService, with_failed: bool
) -> None:
    """20 writers race on one chunk: one row results, and it holds the terminal status of
    the first terminal write that committed, never an earlier status."""
    await db_service.create_meeting(MEETING, GUILD, CHANNEL, T0)
    statuses = ["queued"] * 7 + ["in_progress"] * 7 + ["done"] * 6
    if with_failed:
        statuses[-3:] = ["failed"] * 3
    random.Random(4).shuffle(statuses)
    start = asyncio.Event()

    async def writer(status: str) -> TranscodeStatus:
        await start.wait()
        row = await mirror(db_service, 0, ALICE, status, job_name="s-tx-000000")
        return row.transcode_status

    tasks = [asyncio.create_task(writer(s)) for s in statuses]
    await asyncio.sleep(0)
    start.set()
    seen = await asyncio.gather(*tasks)
    rows = await db_service.get_temp_recordings_for_meeting(MEETING)
    assert len(rows) == 1
    final = rows[0]
    assert final.transcode_status in (TranscodeStatus.DONE, TranscodeStatus.FAILED)
    if not with_failed:
        assert final.transcode_status is TranscodeStatus.DONE
    if final.transcode_status is TranscodeStatus.DONE:
        assert final.sha256 == sha(f"0-{ALICE}") and final.error is None
    else:
        assert final.error == "ffmpeg exited 1" and final.sha256 is None
    # Every terminal writer saw the same final status: once terminal, nothing changed it.
    terminal_seen = {s for s in seen if s in (TranscodeStatus.DONE, TranscodeStatus.FAILED)}
    assert terminal_seen == {final.transcode_status}


async def _meeting_with_chunks(svc: RecordingService) -> None:
    await svc.create_meeting(MEETING, GUILD, CHANNEL, T0)
    for index in (0, 1):
        for user in (ALICE, BOB):
            await mirror(svc, index, user, "done")
    await mirror(svc, 2, BOB, "failed")


@pytest.mark.parametrize(
    ("option", "expected"),
    [("perSpeaker", [ALICE, BOB]), ("mixed", [None]), ("both", [ALICE, BOB, None])],
)
async def test_promotion_tracks_options(
    db_service: RecordingService, option: TracksOption, expected: list[str | None]
) -> None:
    assert option in TRACKS_OPTIONS  # the CRD's spec.output.tracks values, passed as they are
    await _meeting_with_chunks(db_service)
    ids = await db_service.promote_temp_recordings_to_persistent(
        MEETING, option, final_tracks()
    )
    assert len(ids) == len(expected) == len(set(ids)) and all(len(i) == 16 for i in ids)
    rows = {r.id: r for r in await db_service.get_recordings_for_meeting(MEETING)}
    assert set(rows) == set(ids)
    by_track = {t.user_id: t for t in final_tracks()}
    for rid, user in zip(ids, expected, strict=True):
        row, track = rows[rid], by_track[user]
        assert row.user_id == user
        assert row.kind == ("speaker" if user else "mixed")
        assert (row.object_key, row.sha256, row.bytes, row.duration_in_ms, row.format) == (
            track.key, track.sha256, track.bytes, track.duration_ms, "mp3",
        )
        assert row.filename == track.key.rsplit("/", 1)[1]
        assert row.meeting_id == MEETING and row.created_at.tzinfo is not None
    assert await db_service.get_temp_recordings_for_meeting(MEETING) == []
    # A retried promotion (operator restarted after commit) returns the same ids.
    again = await db_service.promote_temp_recordings_to_persistent(
        MEETING, option, final_tracks()
    )
    assert again == ids
    assert len(await db_service.get_recordings_for_meeting(MEETING)) == len(ids)


async def test_promotion_keeps_temp_rows_for_audit(db_service: RecordingService) -> None:
    await _meeting_with_chunks(db_service)
    ids = await db_service.promote_temp_recordings_to_persistent(
        MEETING, "both", final_tracks(), keep_temp_rows=True
    )
    assert len(ids) == 3
    rows = await db_service.get_temp_recordings_for_meeting(MEETING)
    assert len(rows) == 5 and {r.cleaned for r in rows} == {1}


async def test_promotion_without_done_chunk_is_empty(db_service: RecordingService) -> None:
    await db_service.create_meeting(MEETING, GUILD, CHANNEL, T0)
    await mirror(db_service, 0, ALICE, "in_progress")
    await mirror(db_service, 1, ALICE, "failed")
    for option in TRACKS_OPTIONS:
        assert await db_service.promote_temp_recordings_to_persistent(
            MEETING, option, final_tracks()
        ) == []
    assert len(await db_service.get_temp_recordings_for_meeting(MEETING)) == 2
    assert await db_service.get_recordings_for_meeting(MEETING) == []


async def test_promotion_of_a_verified_manifest_needs_no_done_row(
        db_service: RecordingService) -> None:
    """`require_done_rows=False` (the operator, its final manifest verified, its chunks
    rebuilt from S3 with no row mirrored done): the tracks are recorded all the same, and
    the temp rows there are retired."""
    await db_service.create_meeting(MEETING, GUILD, CHANNEL, T0)
    await mirror(db_service, 0, ALICE, "in_progress")
    ids = await db_service.promote_temp_recordings_to_persistent(
        MEETING, "both", final_tracks(), require_done_rows=False)
    rows = await db_service.get_recordings_for_meeting(MEETING)
    assert sorted(r.id for r in rows) == sorted(ids) and len(ids) == len(final_tracks())
    assert await db_service.get_temp_recordings_for_meeting(MEETING) == []


async def test_promotion_bad_input_writes_nothing(db_service: RecordingService) -> None:
    await _meeting_with_chunks(db_service)
    speakers_only = [t for t in final_tracks() if t.kind == "speaker"]
    for old in ("hybrid", "per-speaker"):  # the former storage-only vocabulary is refused
        with pytest.raises(InvalidInputError, match=r"tracks_option.*perSpeaker, mixed, both"):
            await db_service.promote_temp_recordings_to_persistent(
                MEETING, old, final_tracks()  # type: ignore[arg-type]
            )
    with pytest.raises(InvalidInputError, match="mixed track"):
        await db_service.promote_temp_recordings_to_persistent(MEETING, "both", speakers_only)
    with pytest.raises(InvalidInputError, match="appears twice"):
        await db_service.promote_temp_recordings_to_persistent(
            MEETING, "perSpeaker", speakers_only + speakers_only[:1]
        )
    bad_sha = [t.model_copy(update={"sha256": "nope"}) for t in final_tracks()]
    with pytest.raises(InvalidInputError, match="sha256"):
        await db_service.promote_temp_recordings_to_persistent(MEETING, "both", bad_sha)
    with pytest.raises(NotFoundError):
        await db_service.promote_temp_recordings_to_persistent(
            "ffffffffffffffff", "both", final_tracks()
        )
    assert len(await db_service.get_temp_recordings_for_meeting(MEETING)) == 5
    assert await db_service.get_recordings_for_meeting(MEETING) == []


async def test_insert_persistent_recording(db_service: RecordingService) -> None:
    await db_service.create_meeting(MEETING, GUILD, CHANNEL, T0)
    speaker = await db_service.insert_persistent_recording(
        MEETING, kind="speaker", user_id=ALICE, object_key="p/final/a.flac", sha256=sha("a"),
        size_bytes=5_000_000_000, duration_ms=3_600_000, format="flac",
    )
    assert (speaker.filename, speaker.bytes, speaker.kind) == ("a.flac", 5_000_000_000, "speaker")
    mix = await db_service.insert_persistent_recording(
        MEETING, kind="mixed", object_key="p/final/mix.mp3", sha256=sha("m"), size_bytes=10,
        duration_ms=3_600_000, format="mp3",
    )
    assert mix.user_id is None
    with pytest.raises(InvalidInputError, match="user_id"):
        await db_service.insert_persistent_recording(
            MEETING, kind="mixed", user_id=ALICE, object_key="p/x.mp3", sha256=sha("x"),
            size_bytes=1, duration_ms=1, format="mp3",
        )
    with pytest.raises(InvalidInputError, match="user_id"):
        await db_service.insert_persistent_recording(
            MEETING, kind="speaker", object_key="p/y.mp3", sha256=sha("y"), size_bytes=1,
            duration_ms=1, format="mp3",
        )
    with pytest.raises(InvalidInputError, match="constraint"):  # same object key twice
        await db_service.insert_persistent_recording(
            MEETING, kind="mixed", object_key="p/final/mix.mp3", sha256=sha("m"), size_bytes=10,
            duration_ms=1, format="mp3",
        )
    assert len(await db_service.get_recordings_for_meeting(MEETING)) == 2


async def test_cleanup_old_temp_recordings(db_service: RecordingService) -> None:
    """Only rows of promoted meetings (ended over the ttl ago, with `recordings` rows) go;
    those of a meeting that never ended or ended without recordings stay, counted by
    `count_stale_temp_recordings`."""
    await db_service.create_meeting(MEETING, GUILD, CHANNEL, T0)
    now = datetime.now(UTC)
    ages = {"fresh": timedelta(hours=1), "edge": timedelta(hours=23, minutes=59),
            "old": timedelta(hours=25), "ancient": timedelta(days=9)}
    ids = {}
    for i, (name, age) in enumerate(ages.items()):
        row = await db_service.insert_temp_recording(
            MEETING, ALICE, GUILD, chunk_key(i, ALICE), chunk_index=i, created_at=now - age
        )
        ids[name] = row.id
    with pytest.raises(InvalidInputError, match="ttl"):
        await db_service.cleanup_old_temp_recordings(timedelta(0))
    day = timedelta(hours=24)
    # not ended: nothing goes, however old
    assert await db_service.cleanup_old_temp_recordings(day, now=now) == 0
    assert await db_service.count_stale_temp_recordings(day, now=now) == 2
    # ended, but without recordings (released unpromoted): nothing goes
    await db_service.end_meeting(MEETING, now - timedelta(days=2), "cancelled", "released")
    assert await db_service.cleanup_old_temp_recordings(day, now=now) == 0
    # promoted, but ended less than the ttl ago: nothing goes yet
    await db_service.insert_persistent_recording(
        MEETING, kind="mixed", object_key="p/final/mix.mp3", sha256=sha("m"), size_bytes=10,
        duration_ms=1, format="mp3")
    await db_service.end_meeting(MEETING, now - timedelta(hours=1), "completed")
    assert await db_service.cleanup_old_temp_recordings(day, now=now) == 0
    await db_service.end_meeting(MEETING, now - timedelta(days=2), "completed")
    assert await db_service.cleanup_old_temp_recordings(day, now=now) == 2
    left = {r.id for r in await db_service.get_temp_recordings_for_meeting(MEETING)}
    assert left == {ids["fresh"], ids["edge"]}
    assert await db_service.cleanup_old_temp_recordings(day, now=now) == 0
    assert await db_service.count_stale_temp_recordings(day, now=now) == 0

    # A session that still exists keeps its rows however old they are.
    await db_service.insert_temp_recording(
        MEETING, BOB, GUILD, "k/orphan.opus", created_at=now - timedelta(days=3)
    )
    assert await db_service.cleanup_old_temp_recordings(day, keep_meetings=[MEETING]) == 0
    assert await db_service.count_stale_temp_recordings(day, keep_meetings=[MEETING]) == 0
    assert await db_service.cleanup_old_temp_recordings(day) == 1


async def test_cleanup_keeps_retained_temp_rows(db_service: RecordingService) -> None:
    """Fault 4: `spec.retainTempRows` keeps a promoted meeting's temp rows as audit rows
    (`cleaned = 1`); the TTL sweep deletes the meeting's other old rows but never those.
    (Before: every old row of the meeting went, audit rows too.)"""
    now = datetime.now(UTC)
    await db_service.create_meeting(MEETING, GUILD, CHANNEL, T0)
    old = now - timedelta(days=3)
    audit = await db_service.insert_temp_recording(
        MEETING, ALICE, GUILD, chunk_key(0, ALICE), chunk_index=0, created_at=old)
    stray = await db_service.insert_temp_recording(
        MEETING, BOB, GUILD, chunk_key(0, BOB), chunk_index=0, created_at=old)
    await db_service.mark_temp_recording_cleaned([audit.id])
    await db_service.insert_persistent_recording(
        MEETING, kind="mixed", object_key="p/final/mix.mp3", sha256=sha("m"), size_bytes=10,
        duration_ms=1, format="mp3")
    await db_service.end_meeting(MEETING, now - timedelta(days=2), "completed")
    assert await db_service.cleanup_old_temp_recordings(timedelta(hours=24), now=now) == 1
    left = await db_service.get_temp_recordings_for_meeting(MEETING)
    assert [(r.id, r.cleaned) for r in left] == [(audit.id, 1)], f"stray {stray.id}"
    assert await db_service.count_stale_temp_recordings(timedelta(hours=24), now=now) == 0


async def test_heartbeats(db_service: RecordingService) -> None:
    assert await db_service.read_heartbeat("operator") is None
    first = await db_service.write_heartbeat("operator", "starting", now=T0)
    assert (first.last_beat, first.status) == (T0, "starting")
    await db_service.write_heartbeat("operator", "ok", now=T0 + timedelta(seconds=30))
    await db_service.write_heartbeat("recorder", "ok", now=T0)
    beat = await db_service.read_heartbeat("operator")
    assert beat is not None
    assert (beat.last_beat, beat.status) == (T0 + timedelta(seconds=30), "ok")
    with pytest.raises(InvalidInputError, match="service_name"):
        await db_service.write_heartbeat("", "ok")


async def test_unreachable_database_is_a_temporary_failure(
    db_url: str, tmp_path: object
) -> None:
    if db_url.startswith("sqlite"):
        # A directory where the database file should be: SQLite cannot open it.
        bad = db_url.replace("voicetrack.db", "")
    else:
        bad = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/postgres"
    svc = RecordingService.from_url(bad)
    try:
        with pytest.raises(TemporaryFailure) as info:
            await svc.read_heartbeat("operator")
        assert info.value.delay > 0
    finally:
        await svc.close()


async def test_database_outage_is_temporary_and_recovers() -> None:
    """A crashed PostgreSQL gives TemporaryFailure (never a bare client error); once it is
    back, the same service works again without being rebuilt."""
    server = PostgresServer()
    url = await asyncio.to_thread(server.start)
    try:
        await asyncio.to_thread(upgrade_head, url)
        svc = RecordingService.from_url(url)
        try:
            await svc.create_meeting(MEETING, GUILD, CHANNEL, T0)
            await mirror(svc, 0, ALICE, "queued")
            await asyncio.to_thread(server.crash)
            with pytest.raises(TemporaryFailure, match="database"):
                await mirror(svc, 0, ALICE, "in_progress")
            await asyncio.to_thread(server.restart)
            row = await mirror(svc, 0, ALICE, "in_progress")
            assert row.transcode_status is TranscodeStatus.IN_PROGRESS
        finally:
            await svc.close()
    finally:
        await asyncio.to_thread(server.stop)


async def test_sqlite_is_durable_wal_with_full_sync(tmp_path: Path) -> None:
    """The embedded default keeps acknowledged writes through a power loss: WAL with
    synchronous=FULL (2) on every new connection, not NORMAL (1), which may drop the last
    commits. Fails with synchronous=NORMAL."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'durable.db'}")
    try:
        for _ in range(2):  # a fresh connection each round: each is set up on connect
            async with engine.connect() as conn:
                pragmas = [
                    (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
                    for name in ("journal_mode", "synchronous", "foreign_keys")
                ]
            assert pragmas == ["wal", 2, 1]
            await engine.dispose()
    finally:
        await engine.dispose()
