"""two-tier temp_recordings: chunk mirror columns, transcode status, indexes, unique key

Data kept: an old row's `filename` becomes `pcm_path`, its `guild_id` comes from its
meeting, its status is `queued`; the columns the old table did not know (user_id,
session_uid, chunk_index, raw_format) stay NULL. Downgrade puts `pcm_path` back into
`filename` and drops the rest.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

STATUSES = ("queued", "in_progress", "done", "failed")
INDEXES = {
    "ix_temp_recordings_user_id": "user_id",
    "ix_temp_recordings_guild_id": "guild_id",
    "ix_temp_recordings_transcode_status": "transcode_status",
    "ix_temp_recordings_meeting_id": "meeting_id",
}


def _status_type() -> sa.types.TypeEngine:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        postgresql.ENUM(*STATUSES, name="transcode_status").create(bind, checkfirst=True)
        return postgresql.ENUM(*STATUSES, name="transcode_status", create_type=False)
    return sa.Enum(*STATUSES, name="transcode_status")


def upgrade() -> None:
    status_type = _status_type()
    with op.batch_alter_table("temp_recordings") as batch:
        batch.add_column(sa.Column("user_id", sa.String(20), nullable=True))
        batch.add_column(sa.Column("guild_id", sa.String(20), nullable=True))
        batch.add_column(sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("pcm_path", sa.String(512), nullable=True))
        batch.add_column(sa.Column("mp3_path", sa.String(512), nullable=True))
        batch.add_column(
            sa.Column(
                "transcode_status",
                status_type,
                server_default=sa.text("'queued'"),
                nullable=False,
            )
        )
        batch.add_column(sa.Column("sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("duration_ms", sa.Integer(), nullable=True))
        batch.add_column(
            sa.Column("cleaned", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch.add_column(sa.Column("chunk_index", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("raw_format", sa.String(16), nullable=True))
        batch.add_column(sa.Column("session_uid", sa.String(64), nullable=True))
        batch.add_column(sa.Column("job_name", sa.String(63), nullable=True))
        batch.add_column(sa.Column("error", sa.Text(), nullable=True))
    op.execute(
        "UPDATE temp_recordings SET pcm_path = filename, guild_id = "
        "(SELECT meetings.guild_id FROM meetings WHERE meetings.id = temp_recordings.meeting_id)"
    )
    with op.batch_alter_table("temp_recordings") as batch:
        batch.alter_column("pcm_path", existing_type=sa.String(512), nullable=False)
        batch.alter_column("guild_id", existing_type=sa.String(20), nullable=False)
        batch.drop_column("filename")
        batch.create_unique_constraint(
            "uq_temp_recordings_chunk", ["session_uid", "chunk_index", "user_id"]
        )
    for name, column in INDEXES.items():
        op.create_index(name, "temp_recordings", [column])


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="temp_recordings")
    with op.batch_alter_table("temp_recordings") as batch:
        batch.add_column(sa.Column("filename", sa.String(512), nullable=True))
    op.execute("UPDATE temp_recordings SET filename = COALESCE(pcm_path, mp3_path, id)")
    with op.batch_alter_table("temp_recordings") as batch:
        batch.drop_constraint("uq_temp_recordings_chunk", type_="unique")
        batch.alter_column("filename", existing_type=sa.String(512), nullable=False)
        for column in (
            "error", "job_name", "session_uid", "raw_format", "chunk_index", "cleaned",
            "duration_ms", "sha256", "transcode_status", "mp3_path", "pcm_path",
            "completed_at", "guild_id", "user_id",
        ):
            batch.drop_column(column)
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        postgresql.ENUM(name="transcode_status").drop(bind, checkfirst=True)
