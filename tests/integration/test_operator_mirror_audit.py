"""The SQL mirror after a takeover, on real PostgreSQL and SQLite: the operator patches a
chunk's status, then writes its `temp_recordings` rows. A replica killed between the two
(CI stop 21: `tests/disruptive/test_operator_ha.py` found 31 rows, not all done, with every
chunk done) left the rows behind for good, since the in-process `unsynced` mark died with
it. The next active replica now audits each session's mirror once on its first observe
(`chunkmirror.audit_mirror`), in one read, and writes only what lags."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.unit.test_operator_observe_indexed import (
    NAME,
    NS,
    RUNNING_POD,
    UID,
    USER,
    chunk,
    fresh_grant,
    session_view,
)
from voicetrack.db.service import RecordingService
from voicetrack.names import meeting_id_for
from voicetrack.objectstore import S3Settings
from voicetrack_operator.builders import PodSettings
from voicetrack_operator.context import Context, OperatorSettings
from voicetrack_operator.handlers.lifecycle import _audit_anew
from voicetrack_operator.services import grants
from voicetrack_operator.services.chunkmirror import audit_mirror
from voicetrack_operator.services.sessions import SessionService
from voicetrack_operator.services.sessionview import Observed

pytestmark = pytest.mark.integration

GUILD = "100000000000000001"
MEETING = meeting_id_for(UID, None)


class CountingDb:
    """The real service, counting the audit's reads and the mirror's writes."""

    def __init__(self, svc: RecordingService) -> None:
        self.svc, self.reads, self.writes = svc, 0, 0

    async def get_temp_recordings_for_meeting(self, meeting_id: str) -> Any:
        self.reads += 1
        return await self.svc.get_temp_recordings_for_meeting(meeting_id)

    async def upsert_chunk_status(self, *args: Any, **kw: Any) -> Any:
        self.writes += 1
        return await self.svc.upsert_chunk_status(*args, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.svc, name)


def done(index: int) -> dict[str, Any]:
    obj = chunk(index, "done", 60)
    obj["status"].update({"jobName": f"{NAME}-t{index}", "tracks": [{
        "userId": USER, "format": "mp3", "key": f"out/{index}.mp3", "bytes": 10,
        "sha256": "cd" * 32, "durationMs": 10_000}]})
    return obj


def operator_replica(db: CountingDb) -> Context:
    settings = OperatorSettings(database_url="unused", pods=PodSettings(), live_interval_s=0,
                                s3=S3Settings(endpoint="http://127.0.0.1:1", access_key="a",
                                              secret_key="b", bucket="voicetrack"))
    return Context(settings=settings, kube=None, db=db)  # type: ignore[arg-type]


async def test_rows_left_behind_by_a_killed_replica_are_written_by_the_next(
        db_service: RecordingService) -> None:
    grants._remember(UID, fresh_grant(), datetime.now(UTC), renewable=True)
    await db_service.create_meeting(MEETING, GUILD, "100000000000000002",
                                    datetime.now(UTC), UID,
                                    namespace=NS, session_name=NAME)
    for index in range(3):  # the killed replica's writes: all queued, chunk 1 done
        await db_service.upsert_chunk_status(
            UID, index, USER, MEETING, GUILD, f"raw/{index}.opus", "ogg-opus", "queued")
    await db_service.upsert_chunk_status(
        UID, 1, USER, MEETING, GUILD, "raw/1.opus", "ogg-opus", "done",
        mp3_path="out/1.mp3", sha256="cd" * 32, duration_ms=10_000)
    db = CountingDb(db_service)
    ctx = operator_replica(db)
    service = SessionService(ctx)
    # the cluster: chunks 0 and 1 done (0's SQL write was lost with the killed replica),
    # chunk 2 still queued
    seen = Observed(pod=RUNNING_POD, chunks=[done(0), done(1), chunk(2, "queued", 1)])
    await service.observe_session(session_view(), seen)
    rows = {r.chunk_index: str(r.transcode_status)
            for r in await db_service.get_temp_recordings_for_meeting(MEETING)}
    assert rows == {0: "done", 1: "done", 2: "queued"}
    assert (db.reads, db.writes) == (1, 1)  # one read; only the row that lagged written
    await service.observe_session(session_view(), seen)
    assert (db.reads, db.writes) == (1, 1)  # audited once per session and turn

    # the replica turns passive and active again: a fresh audit
    turn = asyncio.ensure_future(_audit_anew(ctx))
    await asyncio.sleep(0)
    turn.cancel()
    await service.observe_session(session_view(), seen)
    assert (db.reads, db.writes) == (2, 1)


async def test_the_audit_writes_no_row_for_a_chunk_not_checked_yet(
        db_service: RecordingService) -> None:
    """A chunk without a status has not been checked against its session (a forged one
    may name another meeting or keys): the audit leaves it to the create handler, which
    refuses it or writes its rows (review of the audit: it wrote them unchecked)."""
    await db_service.create_meeting(MEETING, GUILD, "100000000000000002",
                                    datetime.now(UTC), UID, namespace=NS, session_name=NAME)
    db = CountingDb(db_service)
    ctx = operator_replica(db)
    assert await audit_mirror(ctx, [chunk(0, None, 60), done(1)], MEETING)
    rows = {r.chunk_index: str(r.transcode_status)
            for r in await db_service.get_temp_recordings_for_meeting(MEETING)}
    assert rows == {1: "done"}
    other = done(2)  # not this session's meeting (its keys are that meeting's)
    other["spec"]["meetingId"] = "0000000000000000"
    for t in other["spec"]["tracks"]:
        t["key"] = t["key"].replace(MEETING, "0000000000000000")
    broken = done(3)
    broken["spec"]["tracks"][0]["key"] = "elsewhere"  # does not parse: skipped, no raise
    assert await audit_mirror(ctx, [other, broken], MEETING)
    assert db.writes == 1


async def test_a_missing_meeting_row_marks_the_session_unsynced(
        db_service: RecordingService) -> None:
    """The meeting row is gone (a wiped database): the audit does not raise into the
    observe timer; it marks the session unsynced, whose resync makes the row again."""
    ctx = operator_replica(CountingDb(db_service))
    assert not await audit_mirror(ctx, [done(0)], MEETING)
    assert (NS, NAME) in ctx.unsynced
