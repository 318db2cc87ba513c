"""meetings keep degraded consent: why role opt-outs were not enforced

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03

A session whose recorder could not enforce role-based opt-outs (the Discord Server Members
Intent refused or not requested; the session's `ConsentDegraded` condition, issue 12)
says so on the RecordingSession only, which is gone once promoted. The meeting row keeps
it: `consent_degraded_reason` (the condition's reason, e.g. `MembersIntentRefused`) and
`consent_degraded_message` (its message); both NULL for a meeting recorded with consent
as asked.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("meetings") as batch:
        batch.add_column(sa.Column("consent_degraded_reason", sa.String(64), nullable=True))
        batch.add_column(sa.Column("consent_degraded_message", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("meetings") as batch:
        batch.drop_column("consent_degraded_message")
        batch.drop_column("consent_degraded_reason")
