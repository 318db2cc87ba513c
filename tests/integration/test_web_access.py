"""The web page's authorization rule and its read-only database access, on real PostgreSQL
and SQLite (`voicetrack_web.access`): managers see every meeting of their guild, other
members the meetings in which they spoke (final `recordings` or live `temp_recordings`),
nobody sees another guild's; the engine refuses writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from voicetrack.db.service import RecordingService
from voicetrack_web.access import MeetingAccess, Viewer, read_only_engine

pytestmark = pytest.mark.integration

G1, G2 = "300000000000000001", "300000000000000002"
ALICE, BOB, CAROL, DAVE, ERIN = (f"40000000000000001{i}" for i in range(5))
T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


async def seed(svc: RecordingService) -> None:
    """m-done (G1, alice and bob, promoted), m-live (G1, carol, 2 chunks), m-other (G2)."""
    await svc.create_meeting("mdone00000000001", G1, "1" * 18, T0)
    await svc.create_meeting("mlive00000000002", G1, "1" * 18, T0 + timedelta(hours=1))
    await svc.create_meeting("mothr00000000003", G2, "2" * 18, T0)
    for user in (ALICE, BOB, None):
        track = user or "mix"
        async with svc.transaction() as store:
            await store.insert_persistent_recording(
                "mdone00000000001", kind="speaker" if user else "mixed",
                object_key=f"r/{G1}/mdone00000000001/final/{track}.mp3", sha256="a" * 64,
                size_bytes=1000, duration_ms=61_000, format="mp3", user_id=user)
    await svc.end_meeting("mdone00000000001", T0 + timedelta(minutes=1), "completed")
    for index, status in ((0, "done"), (1, "queued")):
        await svc.upsert_chunk_status(
            "uid-live", index, CAROL, "mlive00000000002", G1,
            f"r/{G1}/mlive00000000002/chunks/{index:06d}/{CAROL}.opus", "ogg-opus", status,
            mp3_path=f"r/x/{index}.mp3" if status == "done" else None,
            sha256="b" * 64 if status == "done" else None,
            duration_ms=5000 if status == "done" else None)
    await svc.upsert_chunk_status(
        "uid-other", 0, DAVE, "mothr00000000003", G2,
        f"r/{G2}/mothr00000000003/chunks/000000/{DAVE}.opus", "ogg-opus", "queued")


async def test_who_sees_what(db_service: RecordingService, db_url: str) -> None:
    await seed(db_service)
    access = MeetingAccess(read_only_engine(db_url))
    try:
        async def ids(viewer: Viewer, guild: str) -> list[str] | None:
            views = await access.meetings(viewer, guild)
            return None if views is None else [v.id for v in views]

        alice = Viewer(ALICE, {G1: False})
        carol = Viewer(CAROL, {G1: False})
        erin = Viewer(ERIN, {G1: False})          # a member who never spoke
        manager = Viewer(ERIN, {G1: True})        # Manage Server in G1
        outsider = Viewer(DAVE, {G2: False})      # spoke in G2 only
        assert await ids(alice, G1) == ["mdone00000000001"]
        assert await ids(carol, G1) == ["mlive00000000002"]
        assert await ids(erin, G1) == []
        assert await ids(manager, G1) == ["mlive00000000002", "mdone00000000001"]
        assert await ids(outsider, G1) is None
        assert await ids(outsider, G2) == ["mothr00000000003"]
        assert await ids(manager, G2) is None

        done = await access.meeting(alice, "mdone00000000001")
        assert done is not None and done.status == "completed"
        assert done.speakers == [ALICE, BOB] and done.duration_ms == 61_000
        assert sorted(t.track for t in done.tracks) == sorted([ALICE, BOB, "mix"])
        live = await access.meeting(manager, "mlive00000000002")
        assert live is not None and live.status == "recording"
        assert live.chunks == {"done": 1, "queued": 1} and live.chunk_count == 2
        assert live.speakers == [CAROL] and live.tracks == []
        for viewer, meeting in ((carol, "mdone00000000001"), (erin, "mdone00000000001"),
                                (outsider, "mdone00000000001"), (manager, "mothr00000000003"),
                                (alice, "mlive00000000002"), (manager, "nosuchmeeting000")):
            assert await access.meeting(viewer, meeting) is None, (viewer, meeting)
        assert await access.guilds_with_meetings([G1, G2, "999999999999999999"]) == {G1, G2}
        assert "object_key" not in str(done.as_dict())
    finally:
        await access.engine.dispose()


async def test_the_engine_refuses_writes(db_service: RecordingService, db_url: str) -> None:
    await seed(db_service)
    engine = read_only_engine(db_url)
    try:
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT count(*) FROM meetings")) == 3
        with pytest.raises(DBAPIError, match=r"read-only|readonly"):
            async with engine.begin() as conn:
                await conn.execute(text("UPDATE meetings SET status = 'failed'"))
    finally:
        await engine.dispose()
    meeting = await db_service.get_meeting("mlive00000000002")
    assert meeting.status == "recording"
