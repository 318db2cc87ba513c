"""The SQL tables, as SQLAlchemy 2 typed models: the one schema module (STYLE.md item 12).

Two tiers (DESIGN.md, "Storage"): `temp_recordings` mirrors every chunk track while a
session records (written by the operator only); `recordings` holds the final tracks after
promotion. `meetings` is one row per recording session, `heartbeats` one row per service.

Column names and types keep the seeds' shape: 16-character ids, Discord snowflakes in
VARCHAR(20), `cleaned` as 0/1, `duration_in_ms` on `recordings`. The Alembic revisions in
`voicetrack/db/migrations/versions/` produce exactly these tables (a test compares them).
Times are timezone-aware UTC on the Python side (`UTCDateTime`).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Dialect,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from voicetrack.resources import TranscodeStatus

ID_LENGTH = 16
"""Length of every id (meetings, temp_recordings, recordings): `secrets.token_hex(8)`."""
SNOWFLAKE_LENGTH = 20
"""Discord snowflakes (guild, channel, user ids) as decimal strings, at most 20 digits."""
PATH_LENGTH = 512
"""Object keys kept in `pcm_path`/`mp3_path` (the seeds' VARCHAR(512))."""
OBJECT_KEY_LENGTH = 1024
"""S3 object keys of final tracks (S3 allows 1024 bytes)."""

UQ_TEMP_CHUNK = "uq_temp_recordings_chunk"
"""The unique key (session_uid, chunk_index, user_id) the mirror's upsert conflicts on."""

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


TRANSCODE_RANK: dict[TranscodeStatus, int] = {status: status.rank for status in TranscodeStatus}
"""A status write takes effect only when it raises this rank (`TranscodeStatus.rank`, from the
one definition in `voicetrack.resources`)."""


class RecordingKind(enum.StrEnum):
    """`recordings.kind`: one speaker's track (`user_id` set) or the mix (`user_id` NULL)."""

    SPEAKER = "speaker"
    MIXED = "mixed"


class MeetingStatus(enum.StrEnum):
    """`meetings.status` (VARCHAR(16)): `recording` from creation until `end_meeting`."""

    RECORDING = "recording"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class UTCDateTime(TypeDecorator[datetime]):
    """`TIMESTAMP WITH TIME ZONE` on PostgreSQL, naive-UTC text on SQLite; always an aware
    UTC `datetime` in Python. Naive datetimes are refused (ValueError) rather than guessed."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: times must be timezone-aware (UTC)")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base; its metadata carries the constraint naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


TRANSCODE_STATUS_TYPE = Enum(
    TranscodeStatus,
    name="transcode_status",
    values_callable=lambda e: [m.value for m in e],
    validate_strings=True,
)


class Meeting(Base):
    """One recording session (`RecordingSession.spec.meetingId`)."""

    __tablename__ = "meetings"
    __table_args__ = (Index("ix_meetings_guild_id", "guild_id"),)

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    guild_id: Mapped[str] = mapped_column(String(SNOWFLAKE_LENGTH))
    channel_id: Mapped[str] = mapped_column(String(SNOWFLAKE_LENGTH))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    status: Mapped[str] = mapped_column(String(16), server_default=text("'recording'"))
    session_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """The RecordingSession (metadata.uid) the meeting id belongs to; NULL for rows made
    before revision 0005 (claimed by the first session that asks)."""
    namespace: Mapped[str | None] = mapped_column(String(63), nullable=True)
    """The session's namespace (revision 0006; NULL for older rows)."""
    session_name: Mapped[str | None] = mapped_column(String(253), nullable=True)
    """The session's metadata.name (revision 0006; NULL for older rows)."""
    failure_reason: Mapped[str | None] = mapped_column(Text(), nullable=True)
    """Why the meeting ended `failed` or `cancelled` (revision 0006); NULL otherwise."""
    consent_degraded_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """Why role opt-outs were not enforced while it recorded (revision 0008): the session's
    `ConsentDegraded` reason (`MembersIntentRefused`, `MembersIntentNotRequested`); NULL
    for a meeting recorded with consent as asked."""
    consent_degraded_message: Mapped[str | None] = mapped_column(Text(), nullable=True)
    """The `ConsentDegraded` message for people (revision 0008); NULL with the reason."""


class TempRecording(Base):
    """One speaker's track of one chunk while the session records (tier 1).

    `pcm_path` is the raw chunk's object key whatever its format (`raw_format`); `mp3_path`,
    `sha256` (64 hex chars) and `duration_ms` are set when the transcode is `done`, `error`
    when it `failed`. Rows adopted from the old shape have NULL `session_uid`,
    `chunk_index`, `user_id` and `raw_format` (the old table did not know them)."""

    __tablename__ = "temp_recordings"
    __table_args__ = (
        UniqueConstraint("session_uid", "chunk_index", "user_id", name=UQ_TEMP_CHUNK),
        Index("ix_temp_recordings_user_id", "user_id"),
        Index("ix_temp_recordings_guild_id", "guild_id"),
        Index("ix_temp_recordings_transcode_status", "transcode_status"),
        Index("ix_temp_recordings_meeting_id", "meeting_id"),
    )

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    meeting_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("meetings.id"))
    user_id: Mapped[str | None] = mapped_column(String(SNOWFLAKE_LENGTH), nullable=True)
    guild_id: Mapped[str] = mapped_column(String(SNOWFLAKE_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    pcm_path: Mapped[str] = mapped_column(String(PATH_LENGTH))
    mp3_path: Mapped[str | None] = mapped_column(String(PATH_LENGTH), nullable=True)
    transcode_status: Mapped[TranscodeStatus] = mapped_column(
        TRANSCODE_STATUS_TYPE, server_default=text("'queued'")
    )
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    duration_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cleaned: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    chunk_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    raw_format: Mapped[str | None] = mapped_column(String(16), nullable=True)
    session_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    job_name: Mapped[str | None] = mapped_column(String(63), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class Recording(Base):
    """One final track of a promoted meeting (tier 2): a speaker's (`kind` speaker,
    `user_id` set) or the mix (`kind` mixed, `user_id` NULL). `filename` is the object
    key's last component; `bytes` its size; `duration_in_ms` its length in ms.
    Rows adopted from the old shape have `kind` mixed and NULL `format`, `bytes`,
    `object_key`."""

    __tablename__ = "recordings"
    __table_args__ = (
        UniqueConstraint("meeting_id", "object_key", name="uq_recordings_meeting_id_object_key"),
        Index("ix_recordings_user_id", "user_id"),
    )

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    meeting_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("meetings.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    duration_in_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    filename: Mapped[str] = mapped_column(String(PATH_LENGTH))
    user_id: Mapped[str | None] = mapped_column(String(SNOWFLAKE_LENGTH), nullable=True)
    kind: Mapped[str] = mapped_column(String(16), server_default=text("'mixed'"))
    format: Mapped[str | None] = mapped_column(String(16), nullable=True)
    bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    object_key: Mapped[str | None] = mapped_column(String(OBJECT_KEY_LENGTH), nullable=True)


class Heartbeat(Base):
    """The last beat of one service (`/healthz` reads it)."""

    __tablename__ = "heartbeats"

    service_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_beat: Mapped[datetime] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(32))


class WebhookDeliveryState(enum.StrEnum):
    """`webhook_deliveries.state` (VARCHAR(16)): `pending` until an attempt is answered with
    2xx (`delivered`) or with a status retrying cannot change (`failed`), or until the retry
    window closes (`abandoned`)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    ABANDONED = "abandoned"


class WebhookDelivery(Base):
    """One completion webhook to deliver (revision 0007): queued when a meeting with
    `spec.notify.webhook` ends, at most one per (meeting, event). `payload` is the JSON
    body without the links (minted at each attempt); the signing key is not stored, only
    where to read it (`secret_namespace`/`secret_name`/`secret_key`). `next_attempt_at` is
    when a worker may take it next (a claimed delivery's lease moves it forward)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("meeting_id", "event", name="uq_webhook_deliveries_meeting_id_event"),
        Index("ix_webhook_deliveries_state_next_attempt_at", "state", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    meeting_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    event: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(String(2048))
    secret_namespace: Mapped[str] = mapped_column(String(63))
    secret_name: Mapped[str] = mapped_column(String(253))
    secret_key: Mapped[str] = mapped_column(String(253))
    bucket: Mapped[str] = mapped_column(String(63))
    payload: Mapped[str] = mapped_column(Text())
    state: Mapped[str] = mapped_column(String(16), server_default=text("'pending'"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text(), nullable=True)


class WebhookAttempt(Base):
    """One POST of a delivery (revision 0007): when, the HTTP status (NULL when no answer
    came), the error (NULL on 2xx), how long it took (ms) and what it led to
    (`delivered`, `retry`, `failed`, `abandoned`)."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (
        UniqueConstraint("delivery_id", "number", name="uq_webhook_attempts_delivery_id_number"),
    )

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    delivery_id: Mapped[str] = mapped_column(String(ID_LENGTH),
                                             ForeignKey("webhook_deliveries.id"))
    number: Mapped[int] = mapped_column(Integer)
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text(), nullable=True)
    duration_ms: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))
