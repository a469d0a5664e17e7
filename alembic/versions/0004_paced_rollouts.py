"""paced rollouts: devices released per minute, each row's place in the order (issue 21)

Revision ID: 0004_paced_rollouts
Revises: 0003_inspection
Create Date: 2026-12-02 11:10:00

``deployments.release_per_minute`` (null: every device at once, as before) and ``rest_released_at`` (when a
canary rollout's remaining devices were released; their paced clock starts there);
``device_deployments.release_slot``: the row's place in its phase's release order (existing rows: 0, i.e.
released, which is what they were).
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0004_paced_rollouts"
down_revision = "0003_inspection"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("release_per_minute", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("rest_released_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("device_deployments") as batch:
        batch.add_column(sa.Column("release_slot", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("device_deployments") as batch:
        batch.drop_column("release_slot")
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("rest_released_at")
        batch.drop_column("release_per_minute")
