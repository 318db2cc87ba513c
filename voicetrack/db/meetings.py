"""`MeetingStore`: the `meetings` rows (one per recording session's meeting id)."""

from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy import update

from voicetrack.chunkspec import CONDITION_REASON_MAX, CONDITION_REASON_PATTERN
from voicetrack.db.base import StoreBase
from voicetrack.db.checks import (
    check_id,
    check_opt_text,
    check_snowflake,
    check_text,
    check_time,
)
from voicetrack.db.schema import Meeting, MeetingStatus
from voicetrack.errors import InvalidInputError, NotFoundError

NAMESPACE_LENGTH = 63
"""`meetings.namespace`: a Kubernetes namespace name (DNS label, at most 63 characters)."""
SESSION_NAME_LENGTH = 253
"""`meetings.session_name`: a RecordingSession's metadata.name (at most 253 characters)."""
FAILURE_REASON_LENGTH = 4000
"""The longest `meetings.failure_reason` accepted (characters): one reason, not a log."""
CONSENT_MESSAGE_LENGTH = 4000
"""The longest `meetings.consent_degraded_message` accepted (characters)."""


class MeetingIdInUse(InvalidInputError):
    """The meeting id belongs to another session (`meetings.session_uid`)."""


def check_owner(meeting: Meeting, session_uid: str | None) -> Meeting:
    """`meeting` when session `session_uid` may write it: it is that session's, or has no
    owner (made before revision 0005, or without one), or `session_uid` is None (a caller
    that names no session). Raises MeetingIdInUse naming both sessions otherwise: a
    session never writes another session's meeting (an edited `spec.meetingId` of an
    object the CRD's immutability rule did not cover)."""
    if session_uid is not None and meeting.session_uid not in (None, session_uid):
        raise MeetingIdInUse(
            f"meeting_id: {meeting.id!r} belongs to session {meeting.session_uid}, "
            f"not to session {session_uid}: its rows are not written")
    return meeting


class MeetingStore(StoreBase):
    """Meetings: get, idempotent create, end. Never commits; times are UTC."""

    async def get_meeting(self, meeting_id: str) -> Meeting:
        """The meeting; NotFoundError if there is none."""
        check_id("meeting_id", meeting_id)
        meeting = await self.session.get(Meeting, meeting_id, populate_existing=True)
        if meeting is None:
            raise NotFoundError(f"meeting_id: no meeting {meeting_id!r}")
        return meeting

    async def owned_meeting(self, meeting_id: str, session_uid: str | None) -> Meeting:
        """The meeting, checked to be writable by session `session_uid` (`check_owner`).
        NotFoundError if there is none; MeetingIdInUse if another session owns it."""
        return check_owner(await self.get_meeting(meeting_id), session_uid)

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
        """Create the meeting, or return it if it exists with the same guild and channel
        (idempotent). InvalidInputError if it exists for another guild or channel, or for a
        `namespace` over 63 or a `session_name` over 253 characters; MeetingIdInUse if it
        belongs to another session than `session_uid` (a row without an owner is claimed).

        `namespace` and `session_name` (the RecordingSession's) are kept so the meeting can
        be found after the object is gone; an existing row that lacks them (made before
        revision 0006, or rebuilt without them) gets them, one that has them keeps its own."""
        check_id("meeting_id", meeting_id)
        check_snowflake("guild_id", guild_id)
        check_snowflake("channel_id", channel_id)
        started = check_time("started_at", started_at)
        namespace = check_opt_text("namespace", namespace, NAMESPACE_LENGTH)
        session_name = check_opt_text("session_name", session_name, SESSION_NAME_LENGTH)
        stmt = (
            self._insert(Meeting)
            .values(
                id=meeting_id,
                guild_id=guild_id,
                channel_id=channel_id,
                started_at=started,
                status=MeetingStatus.RECORDING.value,
                session_uid=session_uid,
                namespace=namespace,
                session_name=session_name,
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
                                             session_uid, namespace=namespace,
                                             session_name=session_name)
        if meeting.guild_id != guild_id or meeting.channel_id != channel_id:
            raise InvalidInputError(
                f"meeting_id: {meeting_id!r} already exists for guild {meeting.guild_id} "
                f"channel {meeting.channel_id}, not guild {guild_id} channel {channel_id}"
            )
        missing = {
            column: value
            for column, value, current in (
                ("namespace", namespace, meeting.namespace),
                ("session_name", session_name, meeting.session_name),
            )
            if value is not None and current is None
        }
        if missing:
            for column, value in missing.items():
                await self.session.execute(
                    update(Meeting)
                    .where(Meeting.id == meeting_id, getattr(Meeting, column).is_(None))
                    .values({column: value})
                    .execution_options(synchronize_session=False)
                )
            return await self.get_meeting(meeting_id)
        return meeting

    async def end_meeting(
        self,
        meeting_id: str,
        ended_at: datetime,
        status: str | MeetingStatus,
        failure_reason: str | None = None,
        *,
        session_uid: str | None = None,
    ) -> Meeting:
        """Set `ended_at`, a final `status` (completed, failed or cancelled) and
        `failure_reason` (why it failed or was cancelled: a line for people, at most 4000
        characters; None for completed, and it replaces any earlier reason).
        NotFoundError for an unknown meeting; MeetingIdInUse (nothing written) when
        `session_uid` is given and another session owns it; InvalidInputError for a bad
        status, a reason given with `completed`, a blank or too long reason, or an
        `ended_at` before `started_at`."""
        check_id("meeting_id", meeting_id)
        ended = check_time("ended_at", ended_at)
        reason = check_opt_text("failure_reason", failure_reason, FAILURE_REASON_LENGTH)
        try:
            final = MeetingStatus(status)
        except ValueError:
            final = MeetingStatus.RECORDING
        if final is MeetingStatus.RECORDING:
            allowed = ", ".join(s.value for s in MeetingStatus if s is not MeetingStatus.RECORDING)
            raise InvalidInputError(f"status: {status!r} is not one of {allowed}")
        if final is MeetingStatus.COMPLETED and reason is not None:
            raise InvalidInputError("failure_reason: a completed meeting has no failure reason")
        meeting = await self.owned_meeting(meeting_id, session_uid)
        if ended < meeting.started_at:
            raise InvalidInputError(
                f"ended_at: {ended.isoformat()} is before started_at "
                f"{meeting.started_at.isoformat()}"
            )
        await self.session.execute(
            update(Meeting)
            .where(Meeting.id == meeting_id)
            .values(ended_at=ended, status=final.value, failure_reason=reason)
            .execution_options(synchronize_session=False)
        )
        return await self.get_meeting(meeting_id)

    async def mark_consent_degraded(self, meeting_id: str, reason: str, message: str
                                    ) -> Meeting:
        """Record that role opt-outs were not enforced while the meeting recorded: the
        session's `ConsentDegraded` condition's `reason` (a Kubernetes condition reason,
        UpperCamelCase, at most 64 characters, e.g. `MembersIntentRefused`) and `message`
        (at most 4000 characters) into `consent_degraded_reason`/`_message` (docs/consent.md,
        issue 12). Idempotent; a later mark replaces an earlier one; nothing clears it (the
        audio recorded meanwhile stays recorded that way). Any status: a mark may come
        before or after `end_meeting`. NotFoundError for an unknown meeting;
        InvalidInputError for a reason or message out of those bounds."""
        check_id("meeting_id", meeting_id)
        reason = check_text("consent_degraded_reason", reason, CONDITION_REASON_MAX)
        if not re.match(CONDITION_REASON_PATTERN, reason):
            raise InvalidInputError(
                f"consent_degraded_reason: {reason!r} is not a condition reason "
                "(UpperCamelCase letters and digits)")
        message = check_text("consent_degraded_message", message, CONSENT_MESSAGE_LENGTH)
        meeting = await self.get_meeting(meeting_id)
        if (meeting.consent_degraded_reason, meeting.consent_degraded_message) == (
                reason, message):
            return meeting
        await self.session.execute(
            update(Meeting)
            .where(Meeting.id == meeting_id)
            .values(consent_degraded_reason=reason, consent_degraded_message=message)
            .execution_options(synchronize_session=False)
        )
        return await self.get_meeting(meeting_id)
