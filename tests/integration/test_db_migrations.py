"""Alembic revisions on real PostgreSQL and SQLite: every revision upgrades and downgrades,
head matches the typed models, and an old-shape database holding rows is adopted with
`stamp 0001` + `upgrade head` without losing them."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

from voicetrack.db import migrate
from voicetrack.db.engine import sync_url
from voicetrack.db.schema import Base, TranscodeStatus
from voicetrack.db.service import RecordingService
from voicetrack.errors import InvalidInputError

pytestmark = pytest.mark.integration

REVISIONS = ["0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008"]
TABLES = {
    None: set(),
    "0001": {"meetings", "temp_recordings", "recordings"},
    "0002": {"meetings", "temp_recordings", "recordings"},
    "0003": {"meetings", "temp_recordings", "recordings"},
    "0004": {"meetings", "temp_recordings", "recordings", "heartbeats"},
    "0005": {"meetings", "temp_recordings", "recordings", "heartbeats"},
    "0006": {"meetings", "temp_recordings", "recordings", "heartbeats"},
    "0007": {"meetings", "temp_recordings", "recordings", "heartbeats", "webhook_deliveries",
             "webhook_attempts"},
    "0008": {"meetings", "temp_recordings", "recordings", "heartbeats", "webhook_deliveries",
             "webhook_attempts"},
}
OLD_TEMP_COLUMNS = {"id", "meeting_id", "created_at", "filename"}
NEW_TEMP_COLUMNS = {
    "id", "meeting_id", "user_id", "guild_id", "created_at", "completed_at", "pcm_path",
    "mp3_path", "transcode_status", "sha256", "duration_ms", "cleaned", "chunk_index",
    "raw_format", "session_uid", "job_name", "error",
}
GUILD = "100000000000000001"
T0 = datetime(2025, 3, 1, 18, 0, tzinfo=UTC)


@contextmanager
def connect(url: str) -> Iterator[Connection]:
    engine = sa.create_engine(sync_url(url), poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def shape(url: str) -> dict[str, set[str]]:
    """Table name → column names (alembic_version left out)."""
    with connect(url) as conn:
        inspector = sa.inspect(conn)
        return {
            t: {c["name"] for c in inspector.get_columns(t)}
            for t in inspector.get_table_names()
            if t != "alembic_version"
        }


def test_every_revision_upgrades_and_downgrades(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert migrate.current_revision(db_url) is None
    for previous, revision in zip([None, *REVISIONS], REVISIONS, strict=False):
        assert migrate.upgrade(db_url, "+1") == [revision]
        assert migrate.current_revision(db_url) == revision
        assert set(shape(db_url)) == TABLES[revision]
        assert migrate.downgrade(db_url, "-1") == [revision]
        assert migrate.current_revision(db_url) == previous
        assert set(shape(db_url)) == TABLES[previous]
        assert migrate.upgrade(db_url, "+1") == [revision]
    assert shape(db_url)["temp_recordings"] == NEW_TEMP_COLUMNS
    assert migrate.upgrade_head(db_url) == []
    assert migrate.downgrade(db_url, "base") == REVISIONS[::-1]
    assert shape(db_url) == {}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="voicetrack.db.migrate"):
        assert migrate.upgrade_head(db_url) == REVISIONS
    logged = [r.getMessage() for r in caplog.records if r.name == "voicetrack.db.migrate"]
    for revision in REVISIONS:
        assert any(m.startswith(f"upgrade applied: {revision} ") for m in logged), logged
    migrate.require_head(db_url)


def test_head_matches_the_typed_models(db_url: str) -> None:
    with pytest.raises(InvalidInputError, match="revision none"):
        migrate.require_head(db_url)
    migrate.upgrade_head(db_url)
    with connect(db_url) as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_unknown_revision_is_invalid_input(db_url: str) -> None:
    with pytest.raises(InvalidInputError, match="revision"):
        migrate.upgrade(db_url, "0099")
    assert migrate.current_revision(db_url) is None


def _old_shape_database(url: str) -> None:
    """The tables as a deployed bot created them (no Alembic, unnamed constraints), with
    rows."""
    meta = sa.MetaData()
    meetings = sa.Table(
        "meetings", meta,
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("guild_id", sa.String(20), nullable=False),
        sa.Column("channel_id", sa.String(20), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("status", sa.String(16), nullable=False),
    )
    temp = sa.Table(
        "temp_recordings", meta,
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("meeting_id", sa.String(16), sa.ForeignKey("meetings.id"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("filename", sa.String(512), nullable=False),
    )
    recordings = sa.Table(
        "recordings", meta,
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("meeting_id", sa.String(16), sa.ForeignKey("meetings.id"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_in_ms", sa.Integer),
        sa.Column("sha256", sa.String(64)),
        sa.Column("filename", sa.String(512), nullable=False),
    )
    with connect(url) as conn:
        meta.create_all(conn)
        conn.execute(meetings.insert(), [
            {"id": "oldmeeting000001", "guild_id": GUILD, "channel_id": "200000000000000002",
             "started_at": T0, "ended_at": T0, "status": "completed"},
        ])
        conn.execute(temp.insert(), [
            {"id": "oldtemp000000001", "meeting_id": "oldmeeting000001", "created_at": T0,
             "filename": "recordings/oldmeeting000001/300000000000000003-0001.pcm"},
            {"id": "oldtemp000000002", "meeting_id": "oldmeeting000001", "created_at": T0,
             "filename": "recordings/oldmeeting000001/300000000000000004-0001.pcm"},
        ])
        conn.execute(recordings.insert(), [
            {"id": "oldrecording0001", "meeting_id": "oldmeeting000001", "created_at": T0,
             "duration_in_ms": 61_000, "sha256": "a" * 64, "filename": "oldmeeting000001.mp3"},
        ])


def test_adopt_an_old_shape_database_keeps_its_rows(db_url: str) -> None:
    _old_shape_database(db_url)
    assert migrate.current_revision(db_url) is None
    migrate.stamp(db_url, migrate.OLD_SHAPE_REVISION)
    assert migrate.upgrade_head(db_url) == REVISIONS[1:]

    async def read() -> tuple[list, list, object]:
        svc = RecordingService.from_url(db_url)
        try:
            temps = await svc.get_temp_recordings_for_meeting("oldmeeting000001")
            recs = await svc.get_recordings_for_meeting("oldmeeting000001")
            # The adopted database takes new writes next to the old rows.
            await svc.upsert_chunk_status(
                "uid-1", 0, "300000000000000003", "oldmeeting000001", GUILD, "k/0.opus",
                "ogg-opus", "queued",
            )
            return temps, recs, await svc.get_meeting("oldmeeting000001")
        finally:
            await svc.close()

    temps, recs, meeting = asyncio.run(read())
    assert [t.id for t in temps] == ["oldtemp000000001", "oldtemp000000002"]
    for t in temps:
        assert t.pcm_path.startswith("recordings/oldmeeting000001/")
        assert t.guild_id == GUILD and t.meeting_id == "oldmeeting000001"
        assert t.transcode_status is TranscodeStatus.QUEUED and t.cleaned == 0
        assert t.created_at == T0 and t.user_id is None and t.chunk_index is None
    [rec] = recs
    assert (rec.id, rec.kind, rec.user_id, rec.duration_in_ms, rec.filename) == (
        "oldrecording0001", "mixed", None, 61_000, "oldmeeting000001.mp3",
    )
    assert meeting.status == "completed"  # type: ignore[attr-defined]

    # Back to the old shape: every row is still there, filename restored from pcm_path.
    assert migrate.downgrade(db_url, migrate.OLD_SHAPE_REVISION) == REVISIONS[:0:-1]
    assert shape(db_url)["temp_recordings"] == OLD_TEMP_COLUMNS
    with connect(db_url) as conn:
        rows = conn.execute(sa.text("SELECT id, filename FROM temp_recordings ORDER BY id"))
        names: dict[str, str] = {row[0]: row[1] for row in rows}
        count = conn.execute(sa.text("SELECT count(*) FROM recordings")).scalar_one()
    assert names["oldtemp000000001"].endswith("300000000000000003-0001.pcm")
    assert names["oldtemp000000002"].endswith("300000000000000004-0001.pcm")
    assert len(names) == 3 and count == 1
    assert migrate.upgrade_head(db_url) == REVISIONS[1:]


def test_two_operators_upgrading_one_fresh_database_at_once(postgres_server: Any) -> None:
    """Two operator replicas start together on a fresh PostgreSQL (operator HA): both
    upgrade to head (two processes: Alembic's context is one per process). One applies
    every revision, the other waits for it and applies none; neither fails."""
    import subprocess
    import sys

    outcomes = []
    for _ in range(3):  # three rounds: the race is a timing window
        url = postgres_server.create_database(f"vt_race_{secrets.token_hex(3)}")
        procs = [subprocess.Popen([sys.executable, "-m", "voicetrack.db.migrate", "upgrade",
                                   "--url", url], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for _ in range(2)]
        outs = [p.communicate(timeout=120)[0] for p in procs]
        outcomes.append([(p.returncode, o.strip().splitlines()[-1:]) for p, o in
                         zip(procs, outs, strict=True)])
        assert all(p.returncode == 0 for p in procs), outcomes
        assert sorted("nothing" in o for o in outs) == [False, True], outcomes
        assert migrate.current_revision(url) == migrate.head_revision()
