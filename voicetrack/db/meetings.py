"""`MeetingStore`: the `meetings` rows (one per recording session's meeting id)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import update

from voicetrack.db.base import StoreBase
from voicetrack.db.checks import check_id, check_snowflake, check_time
from voicetrack.db.schema import Meeting, MeetingStatus
from voicetrack.errors import InvalidInputError, NotFoundError


class MeetingIdInUse(InvalidInputError):
    """The meeting id belongs to another session (`meetings.session_uid`)."""


class MeetingStore(StoreBase):
    """Meetings: get, idempotent create, end. Never commits; times are UTC."""

    async def get_meeting(self, meeting_id: str) -> Meeting:
        """The meeting; NotFoundError if there is none."""
        check_id("meeting_id", meeting_id)
        meeting = await self.session.get(Meeting, meeting_id, populate_existing=True)
        if meeting is None:
            raise NotFoundError(f"meeting_id: no meeting {meeting_id!r}")
        return meeting

    async def create_meeting(
        self,
        meeting_id: str,
        guild_id: str,
        channel_id: str,
        started_at: datetime,
        session_uid: str | None = None,
    ) -> Meeting:
        """Create the meeting, or return it if it exists with the same guild and channel
        (idempotent). InvalidInputError if it exists for another guild or channel;
        MeetingIdInUse if it belongs to another session than `session_uid` (a row without
        an owner is claimed)."""
        check_id("meeting_id", meeting_id)
        check_snowflake("guild_id", guild_id)
        check_snowflake("channel_id", channel_id)
        started = check_time("started_at", started_at)
        stmt = (
            self._insert(Meeting)
            .values(
                id=meeting_id,
                guild_id=guild_id,
                channel_id=channel_id,
                started_at=started,
                status=MeetingStatus.RECORDING.value,
                session_uid=session_uid,
            )
            .on_conflict_do_nothing(index_elements=["id"])
        )
        await self.session.execute(stmt)
        meeting = await self.get_meeting(meeting_id)
        if session_uid is not None and meeting.session_uid != session_uid:
            if meeting.session_uid is not None:
                raise MeetingIdInUse(
                    f"meeting_id: {meeting_id!r} belongs to session {meeting.session_uid}"
                )
            await self.session.execute(
                update(Meeting)
                .where(Meeting.id == meeting_id, Meeting.session_uid.is_(None))
                .values(session_uid=session_uid)
                .execution_options(synchronize_session=False)
            )
            return await self.create_meeting(meeting_id, guild_id, channel_id, started_at,
                                             session_uid)
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
        check_id("meeting_id", meeting_id)
        ended = check_time("ended_at", ended_at)
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
