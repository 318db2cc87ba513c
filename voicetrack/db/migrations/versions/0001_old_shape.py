"""old shape: meetings, temp_recordings (id, meeting_id, created_at, filename), recordings

The shape that deployed bots already have. Adopt such a database with
`stamp 0001` and then `upgrade head` (docs/database.md).

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "meetings",
        sa.Column("id", sa.String(16), nullable=False),
        sa.Column("guild_id", sa.String(20), nullable=False),
        sa.Column("channel_id", sa.String(20), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(16), server_default=sa.text("'recording'"), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_meetings"),
    )
    op.create_table(
        "temp_recordings",
        sa.Column("id", sa.String(16), nullable=False),
        sa.Column("meeting_id", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("filename", sa.String(512), nullable=False),
        sa.ForeignKeyConstraint(
            ["meeting_id"], ["meetings.id"], name="fk_temp_recordings_meeting_id_meetings"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_temp_recordings"),
    )
    op.create_table(
        "recordings",
        sa.Column("id", sa.String(16), nullable=False),
        sa.Column("meeting_id", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_in_ms", sa.Integer(), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("filename", sa.String(512), nullable=False),
        sa.ForeignKeyConstraint(
            ["meeting_id"], ["meetings.id"], name="fk_recordings_meeting_id_meetings"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_recordings"),
    )


def downgrade() -> None:
    op.drop_table("recordings")
    op.drop_table("temp_recordings")
    op.drop_table("meetings")
