"""`RecordingStore`: the SQL statements of the two-tier storage, on one `AsyncSession`.

A store never commits and never opens a transaction (STYLE.md item 12): the caller
(`voicetrack.db.service.RecordingService`) owns `async with session.begin()`. Input is
checked before any statement runs, so bad input raises `InvalidInputError` (or
`NotFoundError`) naming the field and changes nothing. Database client errors are not caught
here; the service translates them at its boundary.

The forward-only status rule (queued → in_progress → done | failed; done and failed
terminal) lives in SQL: every status write is a conditional UPDATE (or the DO UPDATE of an
`INSERT … ON CONFLICT`) whose WHERE clause compares the ranks of the new and the stored
status, so concurrent writers cannot move a row backwards whatever order they commit in.
"""

from __future__ import annotations

import functools
import posixpath
import re
import secrets
from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, bindparam, case, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from voicetrack.db.schema import (
    ID_LENGTH,
    OBJECT_KEY_LENGTH,
    PATH_LENGTH,
    TRANSCODE_RANK,
    Heartbeat,
    Meeting,
    MeetingStatus,
    Recording,
    RecordingKind,
    TempRecording,
    TranscodeStatus,
)
from voicetrack.errors import InvalidInputError, NotFoundError
from voicetrack.manifests import FinalTrack
from voicetrack.resources import MEETING_ID_PATTERN, SNOWFLAKE_PATTERN

PromotionStrategy = Literal["per-speaker", "mixed", "hybrid"]
"""per-speaker: one `recordings` row per speaker track; mixed: one row for the mix
(`user_id` NULL); hybrid: both (N + 1 rows)."""
PROMOTION_STRATEGIES: tuple[str, ...] = ("per-speaker", "mixed", "hybrid")

_ID_RE = re.compile(MEETING_ID_PATTERN)
_SNOWFLAKE_RE = re.compile(SNOWFLAKE_PATTERN)
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_FORMAT_RE = re.compile(r"^[a-z0-9]{1,16}$")
_INT32_MAX = 2**31 - 1


def new_id() -> str:
    """A fresh 16-character id (`secrets.token_hex(8)`)."""
    return secrets.token_hex(ID_LENGTH // 2)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


# ---------------------------------------------------------------- input checks


def _id(field: str, value: object) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise InvalidInputError(f"{field}: expected 16 letters/digits, got {value!r}")
    return value


def _snowflake(field: str, value: object) -> str:
    if not isinstance(value, str) or not _SNOWFLAKE_RE.match(value):
        raise InvalidInputError(
            f"{field}: expected a Discord snowflake (15-20 digits), got {value!r}"
        )
    return value


def _text(field: str, value: object, max_len: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{field}: expected a non-empty string, got {value!r}")
    if len(value) > max_len:
        raise InvalidInputError(f"{field}: {len(value)} characters, at most {max_len}")
    return value


def _opt_text(field: str, value: object, max_len: int) -> str | None:
    return None if value is None else _text(field, value, max_len)


def _sha256(field: str, value: object) -> str:
    if not isinstance(value, str) or not _SHA256_RE.match(value):
        raise InvalidInputError(f"{field}: expected 64 lowercase hex digits, got {value!r}")
    return value


def _count(field: str, value: object, maximum: int = _INT32_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise InvalidInputError(f"{field}: expected an integer in [0, {maximum}], got {value!r}")
    return value


def _time(field: str, value: object) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInputError(f"{field}: expected a timezone-aware datetime, got {value!r}")
    return value.astimezone(UTC)


def _status(value: object) -> TranscodeStatus:
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return TranscodeStatus(value)
    except ValueError:
        allowed = ", ".join(s.value for s in TranscodeStatus)
        raise InvalidInputError(f"status: {value!r} is not one of {allowed}") from None


def _ids(field: str, value: str | Iterable[str]) -> list[str]:
    items = [value] if isinstance(value, str) else list(value)
    if not items:
        raise InvalidInputError(f"{field}: expected at least one id")
    return sorted({_id(field, item) for item in items})


def _rank(column: ColumnElement[Any] | InstrumentedAttribute[Any]) -> ColumnElement[int]:
    """SQL expression: the forward-only rank of a transcode status column."""
    return case(
        *((column == status.value, rank) for status, rank in TRANSCODE_RANK.items()),
        else_=-1,
    )


class RecordingStore:
    """The storage statements on one `AsyncSession` that the caller's transaction holds.

    Never commits. Every method checks its input first (`InvalidInputError` naming the
    field; `NotFoundError` for an unknown meeting or temp id) and returns ORM objects,
    refreshed from the database. Times are timezone-aware UTC."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    @property
    def _dialect(self) -> str:
        return self.session.get_bind().dialect.name

    def _insert(self, entity: type[Any]) -> Any:
        if self._dialect == "postgresql":
            return postgresql.insert(entity)
        return sqlite.insert(entity)

    # ------------------------------------------------------------ meetings

    async def get_meeting(self, meeting_id: str) -> Meeting:
        """The meeting; NotFoundError if there is none."""
        _id("meeting_id", meeting_id)
        meeting = await self.session.get(Meeting, meeting_id, populate_existing=True)
        if meeting is None:
            raise NotFoundError(f"meeting_id: no meeting {meeting_id!r}")
        return meeting

    async def create_meeting(
        self, meeting_id: str, guild_id: str, channel_id: str, started_at: datetime
    ) -> Meeting:
        """Create the meeting, or return it if it exists with the same guild and channel
        (idempotent). InvalidInputError if it exists for another guild or channel."""
        _id("meeting_id", meeting_id)
        _snowflake("guild_id", guild_id)
        _snowflake("channel_id", channel_id)
        started = _time("started_at", started_at)
        stmt = (
            self._insert(Meeting)
            .values(
                id=meeting_id,
                guild_id=guild_id,
                channel_id=channel_id,
                started_at=started,
                status=MeetingStatus.RECORDING.value,
            )
            .on_conflict_do_nothing(index_elements=["id"])
        )
        await self.session.execute(stmt)
        meeting = await self.get_meeting(meeting_id)
        if meeting.guild_id != guild_id or meeting.channel_id != channel_id:
            raise InvalidInputError(
                f"meeting_id: {meeting_id!r} already exists for guild {meeting.guild_id} "
                f"channel {meeting.channel_id}, not guild {guild_id} channel {channel_id}"
            )
        return meeting

    async def end_meeting(
        self, meeting_id: str, ended_at: datetime, status: str | MeetingStatus
    ) -> Meeting:
        """Set `ended_at` and a final `status` (completed, failed or cancelled).
        NotFoundError for an unknown meeting; InvalidInputError for a bad status or an
        `ended_at` before `started_at`."""
        _id("meeting_id", meeting_id)
        ended = _time("ended_at", ended_at)
        try:
            final = MeetingStatus(status)
        except ValueError:
            final = MeetingStatus.RECORDING
        if final is MeetingStatus.RECORDING:
            allowed = ", ".join(s.value for s in MeetingStatus if s is not MeetingStatus.RECORDING)
            raise InvalidInputError(f"status: {status!r} is not one of {allowed}")
        meeting = await self.get_meeting(meeting_id)
        if ended < meeting.started_at:
            raise InvalidInputError(
                f"ended_at: {ended.isoformat()} is before started_at "
                f"{meeting.started_at.isoformat()}"
            )
        await self.session.execute(
            update(Meeting)
            .where(Meeting.id == meeting_id)
            .values(ended_at=ended, status=final.value)
            .execution_options(synchronize_session=False)
        )
        return await self.get_meeting(meeting_id)

    # ------------------------------------------------------------ temp recordings

    async def get_temp_recording(self, temp_id: str) -> TempRecording:
        """The temp row; NotFoundError if there is none."""
        _id("temp_id", temp_id)
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
            user_id=_snowflake("user_id", user_id),
            guild_id=_snowflake("guild_id", guild_id),
            created_at=_time("created_at", created_at or utcnow()),
            pcm_path=_text("pcm_path", pcm_path, PATH_LENGTH),
            transcode_status=TranscodeStatus.QUEUED,
            cleaned=0,
            chunk_index=None if chunk_index is None else _count("chunk_index", chunk_index),
            raw_format=_opt_text("raw_format", raw_format, 16),
            session_uid=_opt_text("session_uid", session_uid, 64),
            job_name=_opt_text("job_name", job_name, 63),
        )
        self.session.add(row)
        await self.session.flush()
        return await self.get_temp_recording(row.id)

    async def _advance(
        self, temp_id: str, target: TranscodeStatus, values: dict[str, Any]
    ) -> TempRecording:
        """Conditional UPDATE: set `target` (and `values`) only where it raises the rank."""
        _id("temp_id", temp_id)
        await self.session.execute(
            update(TempRecording)
            .where(
                TempRecording.id == temp_id,
                _rank(TempRecording.transcode_status) < TRANSCODE_RANK[target],
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
            values["job_name"] = _text("job_name", job_name, 63)
        return await self._advance(temp_id, TranscodeStatus.IN_PROGRESS, values)

    async def update_temp_recording_transcode_completed(
        self, temp_id: str, mp3_path: str, sha256: str, duration_ms: int
    ) -> TempRecording:
        """→ done with the MP3's key, sha256 (64 lowercase hex, required) and duration (ms);
        `completed_at` = now. A row already done or failed stays as it is."""
        values = {
            "mp3_path": _text("mp3_path", mp3_path, PATH_LENGTH),
            "sha256": _sha256("sha256", sha256),
            "duration_ms": _count("duration_ms", duration_ms),
            "completed_at": utcnow(),
            "error": None,
        }
        return await self._advance(temp_id, TranscodeStatus.DONE, values)

    async def update_temp_recording_transcode_failed(
        self, temp_id: str, reason: str
    ) -> TempRecording:
        """→ failed with `reason` kept in `error`; `completed_at` = now. A row already done
        or failed stays as it is."""
        values = {"error": _text("reason", reason, 10_000), "completed_at": utcnow()}
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
        as stored. NotFoundError for an unknown meeting."""
        target = _status(status)
        values: dict[str, Any] = {
            "session_uid": _text("session_uid", session_uid, 64),
            "chunk_index": _count("chunk_index", chunk_index),
            "user_id": _snowflake("user_id", user_id),
            "meeting_id": _id("meeting_id", meeting_id),
            "guild_id": _snowflake("guild_id", guild_id),
            "pcm_path": _text("pcm_path", pcm_path, PATH_LENGTH),
            "raw_format": _text("raw_format", raw_format, 16),
            "job_name": _opt_text("job_name", job_name, 63),
            "mp3_path": _opt_text("mp3_path", mp3_path, PATH_LENGTH),
            "sha256": None if sha256 is None else _sha256("sha256", sha256),
            "duration_ms": None if duration_ms is None else _count("duration_ms", duration_ms),
            "error": _opt_text("error", error, 10_000),
        }
        if target is TranscodeStatus.DONE:
            for field in ("mp3_path", "sha256", "duration_ms"):
                if values[field] is None:
                    raise InvalidInputError(f"{field}: required when status is done")
        if target is TranscodeStatus.FAILED and values["error"] is None:
            raise InvalidInputError("error: required when status is failed")
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
        ids = _ids("temp_ids", temp_ids)
        await self._check_temp_ids(ids)
        await self.session.execute(
            update(TempRecording)
            .where(TempRecording.id.in_(ids))
            .values(cleaned=1)
            .execution_options(synchronize_session=False)
        )
        return len(ids)

    async def delete_temp_recordings(
        self, meeting_id: str | None = None, *, temp_ids: Iterable[str] | None = None
    ) -> int:
        """Delete every temp row of `meeting_id`, or exactly the rows `temp_ids` (give one of
        the two). Returns the number deleted. NotFoundError, changing nothing, for an
        unknown meeting or any unknown id."""
        if (meeting_id is None) == (temp_ids is None):
            raise InvalidInputError("delete_temp_recordings: give meeting_id or temp_ids")
        if meeting_id is not None:
            await self.get_meeting(meeting_id)
            where = TempRecording.meeting_id == meeting_id
        else:
            assert temp_ids is not None
            ids = _ids("temp_ids", temp_ids)
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
        """Delete orphaned temp rows: those created more than `ttl` before `now` (default:
        the current time), except rows of `keep_meetings` (the sessions that still exist,
        e.g. one recording for longer than the ttl). Returns the number deleted.
        InvalidInputError for a ttl that is not positive or a malformed meeting id."""
        if not isinstance(ttl, timedelta) or ttl <= timedelta(0):
            raise InvalidInputError(f"ttl: expected a positive timedelta, got {ttl!r}")
        cutoff = _time("now", now or utcnow()) - ttl
        keep = sorted({_id("keep_meetings", m) for m in keep_meetings})
        stmt = delete(TempRecording).where(TempRecording.created_at < cutoff)
        if keep:
            stmt = stmt.where(TempRecording.meeting_id.not_in(keep))
        result = await self.session.execute(stmt.execution_options(synchronize_session=False))
        return int(result.rowcount)  # type: ignore[attr-defined]

    # ------------------------------------------------------------ persistent recordings

    async def insert_persistent_recording(
        self,
        meeting_id: str,
        *,
        kind: str | RecordingKind,
        object_key: str,
        sha256: str,
        size_bytes: int,
        duration_ms: int,
        format: str,
        user_id: str | None = None,
        created_at: datetime | None = None,
    ) -> Recording:
        """Insert one `recordings` row: a speaker's track (`kind` speaker, `user_id` set) or
        the mix (`kind` mixed, `user_id` None). `filename` is the key's last component.
        NotFoundError for an unknown meeting; InvalidInputError for a bad field."""
        await self.get_meeting(meeting_id)
        row = self._recording_row(
            meeting_id, kind, object_key, sha256, size_bytes, duration_ms, format, user_id,
            _time("created_at", created_at or utcnow()),
        )
        self.session.add(row)
        await self.session.flush()
        return row

    def _recording_row(
        self,
        meeting_id: str,
        kind: str | RecordingKind,
        object_key: str,
        sha256: str,
        size_bytes: int,
        duration_ms: int,
        format: str,
        user_id: str | None,
        created_at: datetime,
    ) -> Recording:
        try:
            rkind = RecordingKind(kind)
        except ValueError:
            raise InvalidInputError(f"kind: {kind!r} is not speaker or mixed") from None
        if rkind is RecordingKind.SPEAKER:
            _snowflake("user_id", user_id)
        elif user_id is not None:
            raise InvalidInputError("user_id: must be None for the mixed track")
        key = _text("object_key", object_key, OBJECT_KEY_LENGTH)
        if not isinstance(format, str) or not _FORMAT_RE.match(format):
            raise InvalidInputError(f"format: expected a short lowercase name, got {format!r}")
        filename = _text("object_key", posixpath.basename(key), PATH_LENGTH)
        return Recording(
            id=new_id(),
            meeting_id=meeting_id,
            created_at=created_at,
            duration_in_ms=_count("duration_ms", duration_ms),
            sha256=_sha256("sha256", sha256),
            filename=filename,
            user_id=user_id,
            kind=rkind.value,
            format=format,
            bytes=_count("bytes", size_bytes, 2**63 - 1),
            object_key=key,
        )

    async def get_recordings_for_meeting(self, meeting_id: str) -> list[Recording]:
        """The meeting's `recordings` rows: speakers by user_id, then the mix.
        NotFoundError for an unknown meeting."""
        await self.get_meeting(meeting_id)
        rows = await self.session.scalars(
            select(Recording)
            .where(Recording.meeting_id == meeting_id)
            .order_by(Recording.kind.desc(), Recording.user_id, Recording.object_key)
            .execution_options(populate_existing=True)
        )
        return list(rows)

    async def promote_temp_recordings_to_persistent(
        self,
        meeting_id: str,
        strategy: PromotionStrategy | str,
        tracks: Sequence[FinalTrack],
        *,
        keep_temp_rows: bool = False,
    ) -> list[str]:
        """Record a promoted meeting's final tracks and retire its temp rows.

        `tracks` are the final manifest's tracks (`voicetrack.manifests.FinalTrack`). The
        strategy picks which become rows: per-speaker → every `speaker` track (N rows),
        mixed → the one `mixed` track (1 row, user_id NULL), hybrid → both (N + 1). Then the
        meeting's temp rows are deleted, or, with `keep_temp_rows` (audit), marked
        `cleaned = 1`. Returns the recording ids: speakers in the given order, then the mix.

        With no `done` temp row the result is `[]` and nothing is written or deleted.
        Idempotent: a track already recorded for the meeting (same object key) keeps its row
        and id, so a retried promotion returns the same ids, also after the temp rows are
        gone. NotFoundError for an unknown meeting; InvalidInputError (nothing written) for
        an unknown strategy, a missing or duplicated track, or a bad track field."""
        await self.get_meeting(meeting_id)
        if strategy not in PROMOTION_STRATEGIES:
            raise InvalidInputError(
                f"strategy: {strategy!r} is not one of {', '.join(PROMOTION_STRATEGIES)}"
            )
        chosen = _select_tracks(strategy, tracks)
        now = utcnow()
        rows = [
            self._recording_row(
                meeting_id, t.kind, t.key, t.sha256, t.bytes, t.duration_ms, t.format,
                t.user_id, now,
            )
            for t in chosen
        ]
        existing = {
            r.object_key: r
            for r in await self.session.scalars(
                select(Recording).where(
                    Recording.meeting_id == meeting_id,
                    Recording.object_key.in_([r.object_key for r in rows]),
                )
            )
        }
        if len(existing) < len(rows):
            done = await self.session.scalar(
                select(func.count())
                .select_from(TempRecording)
                .where(
                    TempRecording.meeting_id == meeting_id,
                    TempRecording.transcode_status == TranscodeStatus.DONE,
                )
            )
            if not done:
                return []
        ids: list[str] = []
        for row in rows:
            assert row.object_key is not None
            old = existing.get(row.object_key)
            if old is None:
                self.session.add(row)
                ids.append(row.id)
            else:
                ids.append(old.id)
        await self.session.flush()
        if keep_temp_rows:
            await self.session.execute(
                update(TempRecording)
                .where(TempRecording.meeting_id == meeting_id)
                .values(cleaned=1)
                .execution_options(synchronize_session=False)
            )
        else:
            await self.session.execute(
                delete(TempRecording)
                .where(TempRecording.meeting_id == meeting_id)
                .execution_options(synchronize_session=False)
            )
        return ids

    # ------------------------------------------------------------ heartbeats

    async def write_heartbeat(
        self, service_name: str, status: str, now: datetime | None = None
    ) -> Heartbeat:
        """Upsert the service's heartbeat: `last_beat` = `now` (default: current time)."""
        _text("service_name", service_name, 64)
        _text("status", status, 32)
        beat = _time("now", now or utcnow())
        insert = self._insert(Heartbeat).values(
            service_name=service_name, last_beat=beat, status=status
        )
        await self.session.execute(
            insert.on_conflict_do_update(
                index_elements=["service_name"],
                set_={"last_beat": insert.excluded.last_beat, "status": insert.excluded.status},
            )
        )
        row = await self.read_heartbeat(service_name)
        assert row is not None
        return row

    async def read_heartbeat(self, service_name: str) -> Heartbeat | None:
        """The service's heartbeat, or None if it never beat."""
        _text("service_name", service_name, 64)
        return await self.session.get(Heartbeat, service_name, populate_existing=True)


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
        where=_rank(new.transcode_status) > _rank(table.c.transcode_status),
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


def _select_tracks(strategy: str, tracks: Sequence[FinalTrack]) -> list[FinalTrack]:
    """The tracks a strategy records, checked: speakers (unique user_id and format), then
    exactly one mix per format."""
    speakers = [t for t in tracks if t.kind == "speaker"]
    mixes = [t for t in tracks if t.kind == "mixed"]
    seen: set[tuple[str | None, str]] = set()
    for t in speakers + mixes:
        if (t.user_id, t.format) in seen:
            who = f"user {t.user_id}" if t.user_id else "the mix"
            raise InvalidInputError(f"tracks: {who} appears twice in format {t.format}")
        seen.add((t.user_id, t.format))
    chosen: list[FinalTrack] = []
    if strategy in ("per-speaker", "hybrid"):
        if not speakers:
            raise InvalidInputError(f"tracks: strategy {strategy} needs speaker tracks, got none")
        chosen += speakers
    if strategy in ("mixed", "hybrid"):
        if not mixes:
            raise InvalidInputError(f"tracks: strategy {strategy} needs the mixed track")
        chosen += mixes
    return chosen
