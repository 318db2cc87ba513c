"""`TempRecordingStore`: the `temp_recordings` rows, one per speaker track of a chunk.

The forward-only status rule (queued → in_progress → done | failed; done and failed
terminal) lives in SQL: every status write is a conditional UPDATE (or the DO UPDATE of an
`INSERT … ON CONFLICT`) whose WHERE clause compares the ranks of the new and the stored
status, so concurrent writers cannot move a row backwards whatever order they commit in.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from voicetrack.db.checks import (
    check_count,
    check_id,
    check_ids,
    check_opt_text,
    check_sha256,
    check_snowflake,
    check_status,
    check_text,
    check_time,
    new_id,
    status_rank,
    utcnow,
)
from voicetrack.db.meetings import MeetingStore
from voicetrack.db.schema import (
    PATH_LENGTH,
    TRANSCODE_RANK,
    Meeting,
    Recording,
    TempRecording,
    TranscodeStatus,
)
from voicetrack.errors import InvalidInputError, NotFoundError


class TempRecordingStore(MeetingStore):
    """Temp rows: insert, the status updates (forward-only), the mirror's idempotent upsert,
    listing, cleaning and deleting. Never commits; times are UTC."""

    async def get_temp_recording(self, temp_id: str) -> TempRecording:
        """The temp row; NotFoundError if there is none."""
        check_id("temp_id", temp_id)
        row = await self.session.get(TempRecording, temp_id, populate_existing=True)
        if row is None:
            raise NotFoundError(f"temp_id: no temp recording {temp_id!r}")
        return row

    async def insert_temp_recording(
        self,
        meeting_id: str,
        user_id: str,
        guild_id: str,
        pcm_path: str,
        *,
        chunk_index: int | None = None,
        raw_format: str | None = None,
        session_uid: str | None = None,
        job_name: str | None = None,
        created_at: datetime | None = None,
    ) -> TempRecording:
        """Insert one `queued` temp row (a new id) for a speaker's raw chunk at `pcm_path`.
        NotFoundError for an unknown meeting. (The mirror uses `upsert_chunk_status`, which
        is idempotent; this plain insert always adds a row.) InvalidInputError when
        `guild_id` is not the meeting's guild."""
        meeting = await self.get_meeting(meeting_id)
        if meeting.guild_id != guild_id:
            raise InvalidInputError(
                f"guild_id: meeting {meeting_id} belongs to guild {meeting.guild_id}, "
                f"not {guild_id}"
            )
        row = TempRecording(
            id=new_id(),
            meeting_id=meeting_id,
            user_id=check_snowflake("user_id", user_id),
            guild_id=check_snowflake("guild_id", guild_id),
            created_at=check_time("created_at", created_at or utcnow()),
            pcm_path=check_text("pcm_path", pcm_path, PATH_LENGTH),
            transcode_status=TranscodeStatus.QUEUED,
            cleaned=0,
            chunk_index=None if chunk_index is None else check_count("chunk_index", chunk_index),
            raw_format=check_opt_text("raw_format", raw_format, 16),
            session_uid=check_opt_text("session_uid", session_uid, 64),
            job_name=check_opt_text("job_name", job_name, 63),
        )
        self.session.add(row)
        await self.session.flush()
        return await self.get_temp_recording(row.id)

    async def _advance(
        self, temp_id: str, target: TranscodeStatus, values: dict[str, Any]
    ) -> TempRecording:
        """Conditional UPDATE: set `target` (and `values`) only where it raises the rank."""
        check_id("temp_id", temp_id)
        await self.session.execute(
            update(TempRecording)
            .where(
                TempRecording.id == temp_id,
                status_rank(TempRecording.transcode_status) < TRANSCODE_RANK[target],
            )
            .values(transcode_status=target, **values)
            .execution_options(synchronize_session=False)
        )
        return await self.get_temp_recording(temp_id)

    async def update_temp_recording_transcode_started(
        self, temp_id: str, job_name: str | None = None
    ) -> TempRecording:
        """queued → in_progress (and `job_name` if given). A late start on a row already
        in_progress, done or failed changes nothing. Returns the row as stored."""
        values: dict[str, Any] = {}
        if job_name is not None:
            values["job_name"] = check_text("job_name", job_name, 63)
        return await self._advance(temp_id, TranscodeStatus.IN_PROGRESS, values)

    async def update_temp_recording_transcode_completed(
        self, temp_id: str, mp3_path: str, sha256: str, duration_ms: int
    ) -> TempRecording:
        """→ done with the MP3's key, sha256 (64 lowercase hex, required) and duration (ms);
        `completed_at` = now. A row already done or failed stays as it is."""
        values = {
            "mp3_path": check_text("mp3_path", mp3_path, PATH_LENGTH),
            "sha256": check_sha256("sha256", sha256),
            "duration_ms": check_count("duration_ms", duration_ms),
            "completed_at": utcnow(),
            "error": None,
        }
        return await self._advance(temp_id, TranscodeStatus.DONE, values)

    async def update_temp_recording_transcode_failed(
        self, temp_id: str, reason: str
    ) -> TempRecording:
        """→ failed with `reason` kept in `error`; `completed_at` = now. A row already done
        or failed stays as it is."""
        values = {"error": check_text("reason", reason, 10_000), "completed_at": utcnow()}
        return await self._advance(temp_id, TranscodeStatus.FAILED, values)

    async def upsert_chunk_status(
        self,
        session_uid: str,
        chunk_index: int,
        user_id: str,
        meeting_id: str,
        guild_id: str,
        pcm_path: str,
        raw_format: str,
        status: str | TranscodeStatus,
        job_name: str | None = None,
        mp3_path: str | None = None,
        sha256: str | None = None,
        duration_ms: int | None = None,
        error: str | None = None,
    ) -> TempRecording:
        """Mirror one speaker track of one chunk: idempotent on (session_uid, chunk_index,
        user_id), forward-only on status, in one `INSERT … ON CONFLICT DO UPDATE … WHERE
        rank(new) > rank(old)`. A repeated or late write (e.g. in_progress after done)
        leaves the row unchanged. `done` needs mp3_path, sha256 and duration_ms; `failed`
        needs error. Optional fields given as None keep their stored value. Returns the row
        as stored. NotFoundError for an unknown meeting; MeetingIdInUse (nothing written)
        for a meeting another session owns (`meetings.session_uid`)."""
        target = check_status(status)
        values: dict[str, Any] = {
            "session_uid": check_text("session_uid", session_uid, 64),
            "chunk_index": check_count("chunk_index", chunk_index),
            "user_id": check_snowflake("user_id", user_id),
            "meeting_id": check_id("meeting_id", meeting_id),
            "guild_id": check_snowflake("guild_id", guild_id),
            "pcm_path": check_text("pcm_path", pcm_path, PATH_LENGTH),
            "raw_format": check_text("raw_format", raw_format, 16),
            "job_name": check_opt_text("job_name", job_name, 63),
            "mp3_path": check_opt_text("mp3_path", mp3_path, PATH_LENGTH),
            "sha256": None if sha256 is None else check_sha256("sha256", sha256),
            "duration_ms": None if duration_ms is None else check_count("duration_ms", duration_ms),
            "error": check_opt_text("error", error, 10_000),
        }
        if target is TranscodeStatus.DONE:
            for field in ("mp3_path", "sha256", "duration_ms"):
                if values[field] is None:
                    raise InvalidInputError(f"{field}: required when status is done")
        if target is TranscodeStatus.FAILED and values["error"] is None:
            raise InvalidInputError("error: required when status is failed")
        await self.owned_meeting(meeting_id, session_uid)
        now = utcnow()
        terminal = TRANSCODE_RANK[target] == TRANSCODE_RANK[TranscodeStatus.DONE]
        params = {
            **values,
            "id": new_id(),
            "created_at": now,
            "completed_at": now if terminal else None,
            "transcode_status": target,
            "cleaned": 0,
        }
        upsert, lookup = _chunk_statements(self._dialect)
        row = await self.session.scalar(upsert, params)
        if row is None:  # the WHERE refused: the stored status already ranks as high
            row = await self.session.scalar(
                lookup,
                {"k_session_uid": session_uid, "k_chunk_index": chunk_index, "k_user_id": user_id},
            )
        assert row is not None  # the upsert inserted it or it was there
        return row

    async def fail_done_chunk(self, session_uid: str, chunk_index: int, reason: str) -> int:
        """done → failed, with `reason` in `error`, for every row of chunk `chunk_index` of
        session `session_uid` that is `done`: the one exception to the forward-only rule,
        for a chunk whose raw input turned out bad at promotion, after its transcode was
        verified (the promotion leaves it out: `voicetrack_operator.services.leftout`).
        A conditional UPDATE (`WHERE transcode_status = 'done'`), so a repeat changes
        nothing. Returns the rows changed."""
        values = {"transcode_status": TranscodeStatus.FAILED,
                  "error": check_text("reason", reason, 10_000)}
        result = await self.session.execute(
            update(TempRecording)
            .where(TempRecording.session_uid == check_text("session_uid", session_uid, 64),
                   TempRecording.chunk_index == check_count("chunk_index", chunk_index),
                   TempRecording.transcode_status == TranscodeStatus.DONE)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        return int(getattr(result, "rowcount", 0) or 0)

    async def get_temp_recordings_for_meeting(self, meeting_id: str) -> list[TempRecording]:
        """The meeting's temp rows ordered by chunk_index, user_id, created_at.
        NotFoundError for an unknown meeting."""
        await self.get_meeting(meeting_id)
        rows = await self.session.scalars(
            select(TempRecording)
            .where(TempRecording.meeting_id == meeting_id)
            .order_by(TempRecording.chunk_index, TempRecording.user_id, TempRecording.created_at)
            .execution_options(populate_existing=True)
        )
        return list(rows)

    async def _check_temp_ids(self, ids: list[str]) -> None:
        found = set(
            await self.session.scalars(select(TempRecording.id).where(TempRecording.id.in_(ids)))
        )
        missing = [i for i in ids if i not in found]
        if missing:
            raise NotFoundError(f"temp_ids: no temp recording {', '.join(missing)}")

    async def mark_temp_recording_cleaned(self, temp_ids: str | Iterable[str]) -> int:
        """Set `cleaned = 1` on the given rows (their raw data is gone). Returns how many
        rows were given. NotFoundError, changing nothing, if any id is unknown."""
        ids = check_ids("temp_ids", temp_ids)
        await self._check_temp_ids(ids)
        await self.session.execute(
            update(TempRecording)
            .where(TempRecording.id.in_(ids))
            .values(cleaned=1)
            .execution_options(synchronize_session=False)
        )
        return len(ids)

    async def delete_temp_recordings(
        self, meeting_id: str | None = None, *, temp_ids: Iterable[str] | None = None,
        session_uid: str | None = None,
    ) -> int:
        """Delete every temp row of `meeting_id`, or exactly the rows `temp_ids` (give one of
        the two). Returns the number deleted. NotFoundError, changing nothing, for an
        unknown meeting or any unknown id; MeetingIdInUse, changing nothing, when
        `session_uid` is given and another session owns `meeting_id`."""
        if (meeting_id is None) == (temp_ids is None):
            raise InvalidInputError("delete_temp_recordings: give meeting_id or temp_ids")
        if meeting_id is not None:
            await self.owned_meeting(meeting_id, session_uid)
            where = TempRecording.meeting_id == meeting_id
        else:
            assert temp_ids is not None
            ids = check_ids("temp_ids", temp_ids)
            await self._check_temp_ids(ids)
            where = TempRecording.id.in_(ids)
        result = await self.session.execute(
            delete(TempRecording).where(where).execution_options(synchronize_session=False)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def cleanup_old_temp_recordings(
        self,
        ttl: timedelta,
        now: datetime | None = None,
        *,
        keep_meetings: Collection[str] = (),
    ) -> int:
        """Delete orphaned temp rows of promoted meetings: rows created more than `ttl`
        before `now` (default: the current time) of a meeting that ended more than `ttl`
        before `now` and has `recordings` rows, except rows of `keep_meetings` (the meetings
        of sessions that still exist). The rows of a meeting that never ended or ended
        without recordings (its session released unpromoted: they index raw chunks kept in
        S3) stay; `count_stale_temp_recordings` reports them. Rows marked `cleaned` (the
        audit rows of `spec.retainTempRows`) are never deleted. Returns the number deleted.
        InvalidInputError for a ttl that is not positive or a malformed meeting id."""
        cutoff, keep = self._stale_bounds(ttl, now, keep_meetings)
        promoted = select(Recording.meeting_id).where(
            Recording.meeting_id == TempRecording.meeting_id).exists()
        ended = select(Meeting.id).where(Meeting.ended_at.is_not(None),
                                         Meeting.ended_at < cutoff)
        stmt = delete(TempRecording).where(TempRecording.created_at < cutoff,
                                           TempRecording.cleaned == 0,
                                           TempRecording.meeting_id.in_(ended), promoted)
        if keep:
            stmt = stmt.where(TempRecording.meeting_id.not_in(keep))
        result = await self.session.execute(stmt.execution_options(synchronize_session=False))
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def count_stale_temp_recordings(
        self, ttl: timedelta, now: datetime | None = None, *,
        keep_meetings: Collection[str] = (),
    ) -> int:
        """How many temp rows created more than `ttl` before `now`, of meetings not in
        `keep_meetings`, are still there and not `cleaned` (rows `cleanup_old_temp_recordings`
        keeps: their meeting is not provably promoted). Same errors as it."""
        cutoff, keep = self._stale_bounds(ttl, now, keep_meetings)
        stmt = select(func.count()).select_from(TempRecording).where(
            TempRecording.created_at < cutoff, TempRecording.cleaned == 0)
        if keep:
            stmt = stmt.where(TempRecording.meeting_id.not_in(keep))
        return int((await self.session.execute(stmt)).scalar_one())

    @staticmethod
    def _stale_bounds(ttl: timedelta, now: datetime | None, keep_meetings: Collection[str]
                      ) -> tuple[datetime, list[str]]:
        """(cutoff, sorted checked meeting ids) of the two stale-row queries."""
        if not isinstance(ttl, timedelta) or ttl <= timedelta(0):
            raise InvalidInputError(f"ttl: expected a positive timedelta, got {ttl!r}")
        cutoff = check_time("now", now or utcnow()) - ttl
        return cutoff, sorted({check_id("keep_meetings", m) for m in keep_meetings})


@functools.cache
def _chunk_statements(dialect: str) -> tuple[Any, Any]:
    """The mirror's upsert (ORM rows from `INSERT … ON CONFLICT DO UPDATE … WHERE
    rank(new) > rank(old) RETURNING *`) and the lookup by unique key, built once per dialect
    with bind parameters, so the hot path only binds values."""
    table = TempRecording.metadata.tables[TempRecording.__tablename__]
    columns = [c.name for c in table.c]
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table).values(
        {name: bindparam(name, type_=table.c[name].type) for name in columns}
    )
    new = insert.excluded
    keep = ("job_name", "mp3_path", "sha256", "duration_ms", "error", "completed_at")
    upsert = insert.on_conflict_do_update(
        index_elements=[table.c.session_uid, table.c.chunk_index, table.c.user_id],
        set_={
            "transcode_status": new.transcode_status,
            **{name: func.coalesce(new[name], table.c[name]) for name in keep},
        },
        where=status_rank(new.transcode_status) > status_rank(table.c.transcode_status),
    ).returning(*table.c)
    upsert_rows = (
        select(TempRecording)
        .from_statement(upsert)
        .execution_options(populate_existing=True)
    )
    lookup = (
        select(TempRecording)
        .where(
            TempRecording.session_uid == bindparam("k_session_uid"),
            TempRecording.chunk_index == bindparam("k_chunk_index"),
            TempRecording.user_id == bindparam("k_user_id"),
        )
        .execution_options(populate_existing=True)
    )
    return upsert_rows, lookup
