"""`RecordingService`: the storage service the operator uses; it owns the transactions.

Each method runs in its own transaction (`async with session.begin()`) around one
`RecordingStore` call and translates database client errors at this boundary:

- `sqlalchemy.exc.IntegrityError` → `NotFoundError` for a foreign key to a missing meeting,
  else `InvalidInputError` (nothing was written: the transaction rolled back);
- `sqlalchemy.exc.DataError` → `InvalidInputError`;
- any other `DBAPIError` (connection refused or lost, lock timeout, server shutdown …) and
  a pool timeout → `TemporaryFailure` (kopf retries later).

Every method is safe to retry after a `TemporaryFailure`: the writes are idempotent
(`create_meeting`, `upsert_chunk_status`, the status updates, `promote_…`, heartbeats) or
all-or-nothing with a visible result (`insert_temp_recording` adds a row each time it
commits; retry it only if it raised).

Usage::

    engine = create_engine(url)              # VOICETRACK_DATABASE_URL by default
    upgrade_head(url)                        # voicetrack.db.migrate, at start-up
    service = RecordingService(engine)
    await service.create_meeting("a1b2c3d4e5f60718", guild, channel, started_at)
    ...
    await engine.dispose()
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from voicetrack.db.engine import create_engine
from voicetrack.db.queries import HistoryStore, MeetingRecord
from voicetrack.db.schema import Heartbeat, Meeting, MeetingStatus, Recording, TempRecording
from voicetrack.db.store import RecordingStore
from voicetrack.db.webhooks import WebhookAttempt, WebhookDelivery
from voicetrack.errors import InvalidInputError, NotFoundError, TemporaryFailure
from voicetrack.manifests import FinalTrack
from voicetrack.resources import TracksOption

__all__ = ["RecordingService", "create_engine", "translate_db_error"]

T = TypeVar("T")

DB_RETRY_DELAY_S = 5.0
"""Suggested wait (s) before retrying after a database outage (`TemporaryFailure.delay`)."""


def translate_db_error(exc: BaseException) -> Exception | None:
    """The Voicetrack error for a SQLAlchemy/DBAPI error, or None if `exc` is not one."""
    if isinstance(exc, sa_exc.IntegrityError):
        orig = exc.orig
        sqlstate = getattr(orig, "sqlstate", None)
        if sqlstate == "23503" or "FOREIGN KEY constraint failed" in str(orig):
            return NotFoundError(f"meeting_id: no such meeting (foreign key violated: {orig})")
        return InvalidInputError(f"constraint violated: {orig}")
    if isinstance(exc, sa_exc.DataError):
        return InvalidInputError(f"value rejected by the database: {exc.orig}")
    if isinstance(exc, sa_exc.DBAPIError):
        return TemporaryFailure(f"database unavailable: {exc.orig}", delay=DB_RETRY_DELAY_S)
    if isinstance(exc, sa_exc.TimeoutError):
        return TemporaryFailure(f"database pool exhausted: {exc}", delay=DB_RETRY_DELAY_S)
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return TemporaryFailure(f"database unreachable: {exc}", delay=DB_RETRY_DELAY_S)
    return None


class RecordingService:
    """The two-tier recording storage over an `AsyncEngine` (see the module docstring for
    the error mapping). Every method runs in one transaction of its own; `transaction()`
    gives a `RecordingStore` to group several calls into one."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def from_url(cls, url: str | URL | None = None, **engine_kwargs: Any) -> RecordingService:
        """A service on a new engine for `url` (default `VOICETRACK_DATABASE_URL`);
        close it with `await service.close()`."""
        return cls(create_engine(url, **engine_kwargs))

    async def close(self) -> None:
        """Dispose the engine (closes pooled connections)."""
        await self.engine.dispose()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[RecordingStore]:
        """One transaction: commits when the block ends, rolls back on an exception;
        database errors come out translated (see `translate_db_error`)."""
        try:
            session: AsyncSession
            async with self._sessions() as session, session.begin():
                yield RecordingStore(session)
        except (sa_exc.SQLAlchemyError, OSError) as exc:
            translated = translate_db_error(exc)
            if translated is None:
                raise
            raise translated from exc

    async def _run(self, call: Callable[[RecordingStore], Awaitable[T]]) -> T:
        async with self.transaction() as store:
            return await call(store)

    # meetings
    async def create_meeting(
        self,
        meeting_id: str,
        guild_id: str,
        channel_id: str,
        started_at: datetime,
        session_uid: str | None = None,
        *,
        namespace: str | None = None,
        session_name: str | None = None,
    ) -> Meeting:
        """See `RecordingStore.create_meeting` (idempotent; `namespace` and `session_name`
        name the RecordingSession, kept after it is gone)."""
        return await self._run(
            lambda s: s.create_meeting(meeting_id, guild_id, channel_id, started_at, session_uid,
                                       namespace=namespace, session_name=session_name)
        )

    async def end_meeting(
        self,
        meeting_id: str,
        ended_at: datetime,
        status: str | MeetingStatus,
        failure_reason: str | None = None,
        *,
        session_uid: str | None = None,
    ) -> Meeting:
        """See `RecordingStore.end_meeting` (`failure_reason` for failed or cancelled;
        with `session_uid`, another session's meeting is refused: MeetingIdInUse)."""
        return await self._run(
            lambda s: s.end_meeting(meeting_id, ended_at, status, failure_reason,
                                    session_uid=session_uid))

    async def mark_consent_degraded(self, meeting_id: str, reason: str, message: str
                                    ) -> Meeting:
        """See `RecordingStore.mark_consent_degraded` (the session's `ConsentDegraded`
        reason and message, kept after the session is gone; idempotent)."""
        return await self._run(
            lambda s: s.mark_consent_degraded(meeting_id, reason, message))

    async def get_meeting(self, meeting_id: str) -> Meeting:
        """See `RecordingStore.get_meeting`."""
        return await self._run(lambda s: s.get_meeting(meeting_id))

    # meeting history (the read side: voicetrack.db.queries)
    async def list_meetings(
        self, guild_id: str | None = None, limit: int = 50
    ) -> list[MeetingRecord]:
        """See `HistoryStore.list_meetings`: newest first, at most `limit` (1..1000)."""
        return await self._run(lambda s: HistoryStore(s.session).list_meetings(guild_id, limit))

    async def meeting_record(self, meeting_id: str) -> MeetingRecord:
        """See `HistoryStore.meeting_record`."""
        return await self._run(lambda s: HistoryStore(s.session).meeting_record(meeting_id))

    async def find_session_meeting(self, namespace: str, session_name: str) -> MeetingRecord:
        """See `HistoryStore.find_session_meeting`: the newest meeting of that session."""
        return await self._run(
            lambda s: HistoryStore(s.session).find_session_meeting(namespace, session_name))

    # temp recordings
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
        """See `RecordingStore.insert_temp_recording`."""
        return await self._run(
            lambda s: s.insert_temp_recording(
                meeting_id, user_id, guild_id, pcm_path, chunk_index=chunk_index,
                raw_format=raw_format, session_uid=session_uid, job_name=job_name,
                created_at=created_at,
            )
        )

    async def get_temp_recording(self, temp_id: str) -> TempRecording:
        """See `RecordingStore.get_temp_recording`."""
        return await self._run(lambda s: s.get_temp_recording(temp_id))

    async def update_temp_recording_transcode_started(
        self, temp_id: str, job_name: str | None = None
    ) -> TempRecording:
        """See `RecordingStore.update_temp_recording_transcode_started`."""
        return await self._run(
            lambda s: s.update_temp_recording_transcode_started(temp_id, job_name)
        )

    async def update_temp_recording_transcode_completed(
        self, temp_id: str, mp3_path: str, sha256: str, duration_ms: int
    ) -> TempRecording:
        """See `RecordingStore.update_temp_recording_transcode_completed`."""
        return await self._run(
            lambda s: s.update_temp_recording_transcode_completed(
                temp_id, mp3_path, sha256, duration_ms
            )
        )

    async def update_temp_recording_transcode_failed(
        self, temp_id: str, reason: str
    ) -> TempRecording:
        """See `RecordingStore.update_temp_recording_transcode_failed`."""
        return await self._run(lambda s: s.update_temp_recording_transcode_failed(temp_id, reason))

    async def upsert_chunk_status(
        self,
        session_uid: str,
        chunk_index: int,
        user_id: str,
        meeting_id: str,
        guild_id: str,
        pcm_path: str,
        raw_format: str,
        status: str,
        job_name: str | None = None,
        mp3_path: str | None = None,
        sha256: str | None = None,
        duration_ms: int | None = None,
        error: str | None = None,
    ) -> TempRecording:
        """See `RecordingStore.upsert_chunk_status` (idempotent, forward-only)."""
        return await self._run(
            lambda s: s.upsert_chunk_status(
                session_uid, chunk_index, user_id, meeting_id, guild_id, pcm_path,
                raw_format, status, job_name=job_name, mp3_path=mp3_path, sha256=sha256,
                duration_ms=duration_ms, error=error,
            )
        )

    async def fail_done_chunk(self, session_uid: str, chunk_index: int, reason: str) -> int:
        """See `RecordingStore.fail_done_chunk` (done → failed for one chunk's rows)."""
        return await self._run(lambda s: s.fail_done_chunk(session_uid, chunk_index, reason))

    async def mark_temp_recording_cleaned(self, temp_ids: str | Iterable[str]) -> int:
        """See `RecordingStore.mark_temp_recording_cleaned`."""
        ids = [temp_ids] if isinstance(temp_ids, str) else list(temp_ids)
        return await self._run(lambda s: s.mark_temp_recording_cleaned(ids))

    async def get_temp_recordings_for_meeting(self, meeting_id: str) -> list[TempRecording]:
        """See `RecordingStore.get_temp_recordings_for_meeting`."""
        return await self._run(lambda s: s.get_temp_recordings_for_meeting(meeting_id))

    async def delete_temp_recordings(
        self, meeting_id: str | None = None, *, temp_ids: Iterable[str] | None = None,
        session_uid: str | None = None,
    ) -> int:
        """See `RecordingStore.delete_temp_recordings` (with `session_uid`, another
        session's meeting is refused: MeetingIdInUse)."""
        ids = None if temp_ids is None else list(temp_ids)
        return await self._run(lambda s: s.delete_temp_recordings(
            meeting_id, temp_ids=ids, session_uid=session_uid))

    async def cleanup_old_temp_recordings(
        self,
        ttl: timedelta,
        now: datetime | None = None,
        *,
        keep_meetings: Collection[str] = (),
    ) -> int:
        """See `RecordingStore.cleanup_old_temp_recordings`."""
        keep = list(keep_meetings)
        return await self._run(
            lambda s: s.cleanup_old_temp_recordings(ttl, now, keep_meetings=keep)
        )

    async def count_stale_temp_recordings(
        self, ttl: timedelta, now: datetime | None = None, *,
        keep_meetings: Collection[str] = (),
    ) -> int:
        """See `RecordingStore.count_stale_temp_recordings`."""
        keep = list(keep_meetings)
        return await self._run(
            lambda s: s.count_stale_temp_recordings(ttl, now, keep_meetings=keep))

    # persistent recordings
    async def insert_persistent_recording(
        self,
        meeting_id: str,
        *,
        kind: str,
        object_key: str,
        sha256: str,
        size_bytes: int,
        duration_ms: int,
        format: str,
        user_id: str | None = None,
        created_at: datetime | None = None,
    ) -> Recording:
        """See `RecordingStore.insert_persistent_recording`."""
        return await self._run(
            lambda s: s.insert_persistent_recording(
                meeting_id, kind=kind, object_key=object_key, sha256=sha256,
                size_bytes=size_bytes, duration_ms=duration_ms, format=format,
                user_id=user_id, created_at=created_at,
            )
        )

    async def get_recordings_for_meeting(self, meeting_id: str) -> list[Recording]:
        """See `RecordingStore.get_recordings_for_meeting`."""
        return await self._run(lambda s: s.get_recordings_for_meeting(meeting_id))

    async def promote_temp_recordings_to_persistent(
        self,
        meeting_id: str,
        tracks_option: TracksOption,
        tracks: Sequence[FinalTrack],
        *,
        keep_temp_rows: bool = False,
        session_uid: str | None = None,
        require_done_rows: bool = True,
    ) -> list[str]:
        """See `RecordingStore.promote_temp_recordings_to_persistent`: the rows and the
        temp-row deletion (or `cleaned = 1`) commit together or not at all; with
        `session_uid`, another session's meeting is refused (MeetingIdInUse)."""
        return await self._run(
            lambda s: s.promote_temp_recordings_to_persistent(
                meeting_id, tracks_option, tracks, keep_temp_rows=keep_temp_rows,
                session_uid=session_uid, require_done_rows=require_done_rows,
            )
        )

    # heartbeats
    async def write_heartbeat(
        self, service_name: str, status: str, now: datetime | None = None
    ) -> Heartbeat:
        """See `RecordingStore.write_heartbeat`."""
        return await self._run(lambda s: s.write_heartbeat(service_name, status, now))

    async def read_heartbeat(self, service_name: str) -> Heartbeat | None:
        """See `RecordingStore.read_heartbeat`."""
        return await self._run(lambda s: s.read_heartbeat(service_name))

    # completion webhook (voicetrack.db.webhooks)
    async def enqueue_webhook(self, meeting_id: str, event: str, url: str,
                              secret_ref: tuple[str, str, str], bucket: str, payload: str,
                              now: datetime) -> WebhookDelivery:
        """See `RecordingStore.enqueue_webhook` (idempotent per meeting and event)."""
        return await self._run(lambda s: s.enqueue_webhook(meeting_id, event, url, secret_ref,
                                                           bucket, payload, now))

    async def claim_due_webhooks(self, now: datetime, lease: timedelta, limit: int = 16
                                 ) -> list[WebhookDelivery]:
        """See `RecordingStore.claim_due_webhooks`."""
        return await self._run(lambda s: s.claim_due_webhooks(now, lease, limit))

    async def record_webhook_attempt(self, delivery_id: str, number: int, **attempt: Any
                                     ) -> WebhookDelivery:
        """See `RecordingStore.record_webhook_attempt` (idempotent per attempt number)."""
        return await self._run(lambda s: s.record_webhook_attempt(delivery_id, number,
                                                                  **attempt))

    async def get_webhook_delivery(self, delivery_id: str) -> WebhookDelivery:
        """See `RecordingStore.get_webhook_delivery`."""
        return await self._run(lambda s: s.get_webhook_delivery(delivery_id))

    async def get_webhook_deliveries_for_meeting(self, meeting_id: str
                                                 ) -> list[WebhookDelivery]:
        """See `RecordingStore.get_webhook_deliveries_for_meeting`."""
        return await self._run(lambda s: s.get_webhook_deliveries_for_meeting(meeting_id))

    async def get_webhook_attempts(self, delivery_id: str) -> list[WebhookAttempt]:
        """See `RecordingStore.get_webhook_attempts`."""
        return await self._run(lambda s: s.get_webhook_attempts(delivery_id))
