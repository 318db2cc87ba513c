"""`PersistentRecordingStore`: the `recordings` rows (final tracks) and the promotion that
writes them and retires a meeting's temp rows in the caller's one transaction."""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, select, update

from voicetrack.db.checks import (
    check_count,
    check_format,
    check_sha256,
    check_snowflake,
    check_text,
    check_time,
    new_id,
    utcnow,
)
from voicetrack.db.meetings import MeetingStore
from voicetrack.db.schema import (
    OBJECT_KEY_LENGTH,
    PATH_LENGTH,
    Recording,
    RecordingKind,
    TempRecording,
    TranscodeStatus,
)
from voicetrack.errors import InvalidInputError
from voicetrack.manifests import FinalTrack
from voicetrack.resources import TRACKS_OPTIONS, TracksOption


class PersistentRecordingStore(MeetingStore):
    """Final-track rows: insert, list, promote. Never commits; times are UTC."""

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
            check_time("created_at", created_at or utcnow()),
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
            check_snowflake("user_id", user_id)
        elif user_id is not None:
            raise InvalidInputError("user_id: must be None for the mixed track")
        key = check_text("object_key", object_key, OBJECT_KEY_LENGTH)
        check_format("format", format)
        filename = check_text("object_key", posixpath.basename(key), PATH_LENGTH)
        return Recording(
            id=new_id(),
            meeting_id=meeting_id,
            created_at=created_at,
            duration_in_ms=check_count("duration_ms", duration_ms),
            sha256=check_sha256("sha256", sha256),
            filename=filename,
            user_id=user_id,
            kind=rkind.value,
            format=format,
            bytes=check_count("bytes", size_bytes, 2**63 - 1),
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
        tracks_option: TracksOption,
        tracks: Sequence[FinalTrack],
        *,
        keep_temp_rows: bool = False,
        session_uid: str | None = None,
        require_done_rows: bool = True,
    ) -> list[str]:
        """Record a promoted meeting's final tracks and retire its temp rows.

        `tracks` are the final manifest's tracks (`voicetrack.manifests.FinalTrack`).
        `tracks_option` is the session's `spec.output.tracks` (`voicetrack.resources.
        TracksOption`), passed as it is: perSpeaker → every `speaker` track (N rows), mixed →
        the one `mixed` track (1 row, user_id NULL), both → both (N + 1). Then the
        meeting's temp rows are deleted, or, with `keep_temp_rows` (audit), marked
        `cleaned = 1`. Returns the recording ids: speakers in the given order, then the mix.

        With no `done` temp row the result is `[]` and nothing is written or deleted,
        unless `require_done_rows` is False: the operator's promotion verified `tracks`
        against chunks it rebuilt from S3 (their RecordingChunks deleted before any was
        mirrored `done`: a young session deleted with `--cascade=foreground`, or its
        namespace deleted), so the final manifest, not the mirror, says they exist.
        Idempotent: a track already recorded for the meeting (same object key) keeps its row
        and id, so a retried promotion returns the same ids, also after the temp rows are
        gone. NotFoundError for an unknown meeting; MeetingIdInUse (nothing written) when
        `session_uid` (the promoting session) is given and another session owns the
        meeting; InvalidInputError (nothing written) for a `tracks_option` not in
        `TRACKS_OPTIONS`, a missing or duplicated track, or a bad track field."""
        await self.owned_meeting(meeting_id, session_uid)
        if tracks_option not in TRACKS_OPTIONS:
            raise InvalidInputError(
                f"tracks_option: {tracks_option!r} is not one of {', '.join(TRACKS_OPTIONS)}"
                " (spec.output.tracks)"
            )
        chosen = _select_tracks(tracks_option, tracks)
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
        if require_done_rows and len(existing) < len(rows):
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


def _select_tracks(option: TracksOption, tracks: Sequence[FinalTrack]) -> list[FinalTrack]:
    """The tracks `option` records, checked: speakers (unique user_id and format), then
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
    if option in ("perSpeaker", "both"):
        if not speakers:
            raise InvalidInputError(f"tracks: option {option} needs speaker tracks, got none")
        chosen += speakers
    if option in ("mixed", "both"):
        if not mixes:
            raise InvalidInputError(f"tracks: option {option} needs the mixed track")
        chosen += mixes
    return chosen
