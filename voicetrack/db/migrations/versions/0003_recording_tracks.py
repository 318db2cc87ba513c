"""recordings as final tracks: user_id (NULL for the mix), kind, format, bytes, object_key

Data kept: old rows become kind `mixed` (they have no speaker) with NULL format, bytes and
object_key.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("recordings") as batch:
        batch.add_column(sa.Column("user_id", sa.String(20), nullable=True))
        batch.add_column(
            sa.Column("kind", sa.String(16), server_default=sa.text("'mixed'"), nullable=False)
        )
        batch.add_column(sa.Column("format", sa.String(16), nullable=True))
        batch.add_column(sa.Column("bytes", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("object_key", sa.String(1024), nullable=True))
        batch.create_unique_constraint(
            "uq_recordings_meeting_id_object_key", ["meeting_id", "object_key"]
        )
    op.create_index("ix_recordings_user_id", "recordings", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_recordings_user_id", table_name="recordings")
    with op.batch_alter_table("recordings") as batch:
        batch.drop_constraint("uq_recordings_meeting_id_object_key", type_="unique")
        for column in ("object_key", "bytes", "format", "kind", "user_id"):
            batch.drop_column(column)
