"""meetings keep their history: namespace, session name and failure reason

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

A meeting row outlives its RecordingSession (the object is gone once promoted), so the row
keeps what people look it up by (`namespace`, `session_name`) and why it ended as it did
(`failure_reason`, NULL unless `status` is failed or cancelled).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("meetings") as batch:
        batch.add_column(sa.Column("namespace", sa.String(63), nullable=True))
        batch.add_column(sa.Column("session_name", sa.String(253), nullable=True))
        batch.add_column(sa.Column("failure_reason", sa.Text(), nullable=True))
        batch.create_index("ix_meetings_guild_id", ["guild_id"])


def downgrade() -> None:
    with op.batch_alter_table("meetings") as batch:
        batch.drop_index("ix_meetings_guild_id")
        batch.drop_column("failure_reason")
        batch.drop_column("session_name")
        batch.drop_column("namespace")
