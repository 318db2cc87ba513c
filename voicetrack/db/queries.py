"""`HistoryStore`: the read side of the meeting history, with typed results.

What people ask after (or while) recording: which meetings a guild has, how far a live one
is, who spoke, how long the result is, and why one failed. The answers come from
`meetings` (kept after the RecordingSession is gone: namespace, session name, status,
failure reason), `recordings` (the final tracks) and `temp_recordings` (chunk progress
while a session records). Like every store it never commits; the caller
(`voicetrack.db.service.RecordingService`) owns the transaction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from voicetrack.db.base import StoreBase
from voicetrack.db.checks import check_id, check_snowflake, check_text
from voicetrack.db.schema import (
    Meeting,
    MeetingStatus,
    Recording,
    RecordingKind,
    TempRecording,
    TranscodeStatus,
)
from voicetrack.errors import InvalidInputError, NotFoundError

MAX_LIST_LIMIT = 1000
"""The most meetings one `list_meetings` call returns."""


@dataclass(frozen=True)
class ChunkProgress:
    """Transcode progress of a meeting's chunks, from `temp_recordings`. A chunk (one time
    window, one row per speaker) is `done` when every one of its rows is, `failed` when any
    is; the rest are pending (queued or transcoding)."""

    total: int
    done: int
    failed: int

    @property
    def pending(self) -> int:
        """Chunks neither done nor failed."""
        return self.total - self.done - self.failed

    def as_dict(self) -> dict[str, int]:
        """`{total, done, failed, pending}` for JSON answers."""
        return {"total": self.total, "done": self.done, "failed": self.failed,
                "pending": self.pending}


@dataclass(frozen=True)
class MeetingRecord:
    """One meeting as the history shows it.

    `speakers` are the user ids heard (final speaker tracks, else the live chunk rows),
    sorted; `duration_ms` the longest final track (ms), None before promotion; `tracks` the
    number of `recordings` rows; `chunks` the chunk progress while temp rows exist (a live
    meeting, or one whose rows were retained), else None. Times are aware UTC."""

    meeting_id: str
    guild_id: str
    channel_id: str
    started_at: datetime
    ended_at: datetime | None
    status: str
    namespace: str | None
    session_name: str | None
    failure_reason: str | None
    speakers: tuple[str, ...] = ()
    duration_ms: int | None = None
    tracks: int = 0
    chunks: ChunkProgress | None = field(default=None)
    consent_degraded_reason: str | None = None
    """Why role opt-outs were not enforced while it recorded (`meetings`, revision 0008:
    the session's `ConsentDegraded` reason); None when consent ran as asked."""
    consent_degraded_message: str | None = None
    """The `ConsentDegraded` message; None with the reason."""

    @property
    def live(self) -> bool:
        """Still recording (or being promoted): `status` is `recording`."""
        return self.status == MeetingStatus.RECORDING.value

    @property
    def session(self) -> str | None:
        """`namespace/name` of the RecordingSession, None for rows made before 0006."""
        if self.namespace and self.session_name:
            return f"{self.namespace}/{self.session_name}"
        return self.session_name

    def elapsed_ms(self, now: datetime) -> int:
        """Wall-clock length (ms): `ended_at` (or `now` while live) minus `started_at`."""
        end = self.ended_at or now
        return max(0, int((end - self.started_at).total_seconds() * 1000))

    def as_dict(self, now: datetime) -> dict[str, Any]:
        """A JSON-ready dict (ISO 8601 times; `elapsed_ms` measured at `now`)."""
        return {
            "meeting_id": self.meeting_id, "guild_id": self.guild_id,
            "channel_id": self.channel_id, "started_at": self.started_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "status": self.status, "namespace": self.namespace,
            "session_name": self.session_name, "failure_reason": self.failure_reason,
            "speakers": list(self.speakers), "duration_ms": self.duration_ms,
            "elapsed_ms": self.elapsed_ms(now), "tracks": self.tracks,
            "chunks": self.chunks.as_dict() if self.chunks else None,
            "consent_degraded": {"reason": self.consent_degraded_reason,
                                 "message": self.consent_degraded_message}
            if self.consent_degraded_reason else None,
        }


class HistoryStore(StoreBase):
    """Reads of the meeting history. Never commits; every method checks its input first
    (`InvalidInputError` naming the argument)."""

    async def list_meetings(
        self, guild_id: str | None = None, limit: int = 50
    ) -> list[MeetingRecord]:
        """The newest `limit` meetings (1..1000), of one guild when `guild_id` is given,
        newest first (by `started_at`)."""
        if guild_id is not None:
            check_snowflake("guild_id", guild_id)
        if isinstance(limit, bool) or not isinstance(limit, int) or not (
                1 <= limit <= MAX_LIST_LIMIT):
            raise InvalidInputError(
                f"limit: expected an integer in [1, {MAX_LIST_LIMIT}], got {limit!r}")
        stmt = select(Meeting).order_by(Meeting.started_at.desc(), Meeting.id).limit(limit)
        if guild_id is not None:
            stmt = stmt.where(Meeting.guild_id == guild_id)
        meetings = list(await self.session.scalars(
            stmt.execution_options(populate_existing=True)))
        return await self._records(meetings)

    async def meeting_record(self, meeting_id: str) -> MeetingRecord:
        """One meeting's record. NotFoundError when there is no such meeting."""
        check_id("meeting_id", meeting_id)
        meeting = await self.session.get(Meeting, meeting_id, populate_existing=True)
        if meeting is None:
            raise NotFoundError(f"meeting: no meeting {meeting_id!r}")
        return (await self._records([meeting]))[0]

    async def find_session_meeting(self, namespace: str, session_name: str) -> MeetingRecord:
        """The newest meeting recorded by RecordingSession `namespace/session_name` (a name
        can be used again after deletion). NotFoundError when there is none."""
        check_text("namespace", namespace, 63)
        check_text("session_name", session_name, 253)
        meeting = await self.session.scalar(
            select(Meeting)
            .where(Meeting.namespace == namespace, Meeting.session_name == session_name)
            .order_by(Meeting.started_at.desc(), Meeting.id)
            .limit(1)
            .execution_options(populate_existing=True)
        )
        if meeting is None:
            raise NotFoundError(f"meeting: no meeting of session {namespace}/{session_name}")
        return (await self._records([meeting]))[0]

    async def _records(self, meetings: Sequence[Meeting]) -> list[MeetingRecord]:
        """Join each meeting with its final tracks' and chunk rows' aggregates (two
        queries whatever the number of meetings)."""
        ids = [m.id for m in meetings]
        if not ids:
            return []
        finals: dict[str, tuple[int, int | None]] = {}
        speakers: dict[str, set[str]] = defaultdict(set)
        for meeting_id, count, longest in await self.session.execute(
            select(Recording.meeting_id, func.count(), func.max(Recording.duration_in_ms))
            .where(Recording.meeting_id.in_(ids))
            .group_by(Recording.meeting_id)
        ):
            finals[meeting_id] = (int(count), None if longest is None else int(longest))
        for meeting_id, user_id in await self.session.execute(
            select(Recording.meeting_id, Recording.user_id)
            .where(Recording.meeting_id.in_(ids), Recording.kind == RecordingKind.SPEAKER.value,
                   Recording.user_id.is_not(None))
            .distinct()
        ):
            if user_id:
                speakers[meeting_id].add(user_id)
        chunk_states: dict[str, dict[tuple[str | None, int | str], list[TranscodeStatus]]] = (
            defaultdict(lambda: defaultdict(list)))
        live_speakers: dict[str, set[str]] = defaultdict(set)
        for meeting_id, row_id, session_uid, index, user_id, status in await self.session.execute(
            select(TempRecording.meeting_id, TempRecording.id, TempRecording.session_uid,
                   TempRecording.chunk_index, TempRecording.user_id,
                   TempRecording.transcode_status)
            .where(TempRecording.meeting_id.in_(ids))
        ):
            chunk = (session_uid, index if index is not None else row_id)
            chunk_states[meeting_id][chunk].append(TranscodeStatus(status))
            if user_id:
                live_speakers[meeting_id].add(user_id)
        out = []
        for m in meetings:
            count, longest = finals.get(m.id, (0, None))
            states = chunk_states.get(m.id)
            progress = None
            if states:
                progress = ChunkProgress(
                    total=len(states),
                    done=sum(all(s is TranscodeStatus.DONE for s in v) for v in states.values()),
                    failed=sum(any(s is TranscodeStatus.FAILED for s in v)
                               for v in states.values()),
                )
            heard = speakers.get(m.id) or live_speakers.get(m.id) or set()
            out.append(MeetingRecord(
                meeting_id=m.id, guild_id=m.guild_id, channel_id=m.channel_id,
                started_at=m.started_at, ended_at=m.ended_at, status=m.status,
                namespace=m.namespace, session_name=m.session_name,
                failure_reason=m.failure_reason, speakers=tuple(sorted(heard)),
                duration_ms=longest, tracks=count, chunks=progress,
                consent_degraded_reason=m.consent_degraded_reason,
                consent_degraded_message=m.consent_degraded_message,
            ))
        return out
