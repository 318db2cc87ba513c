"""webhook deliveries and their attempts (issue 13, the completion webhook)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

`webhook_deliveries`: one row per completion webhook to deliver, unique per (meeting_id,
event); the JSON body without links (they are minted at each attempt), where the signing
key is (Secret namespace/name/key; the key itself is never stored), the state and when the
next attempt is due. `webhook_attempts`: one row per POST (time, HTTP status, error,
duration in ms, outcome). No foreign key to `meetings`: a delivery is a self-contained
snapshot that outlives whatever happens to the meeting row.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(16), nullable=False),
        sa.Column("meeting_id", sa.String(16), nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("secret_namespace", sa.String(63), nullable=False),
        sa.Column("secret_name", sa.String(253), nullable=False),
        sa.Column("secret_key", sa.String(253), nullable=False),
        sa.Column("bucket", sa.String(63), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), server_default=sa.text("'pending'"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
        sa.UniqueConstraint("meeting_id", "event",
                            name="uq_webhook_deliveries_meeting_id_event"),
    )
    op.create_index("ix_webhook_deliveries_state_next_attempt_at", "webhook_deliveries",
                    ["state", "next_attempt_at"])
    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.String(16), nullable=False),
        sa.Column("delivery_id", sa.String(16), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_attempts"),
        sa.ForeignKeyConstraint(["delivery_id"], ["webhook_deliveries.id"],
                                name="fk_webhook_attempts_delivery_id_webhook_deliveries"),
        sa.UniqueConstraint("delivery_id", "number",
                            name="uq_webhook_attempts_delivery_id_number"),
    )


def downgrade() -> None:
    op.drop_table("webhook_attempts")
    op.drop_index("ix_webhook_deliveries_state_next_attempt_at",
                  table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
