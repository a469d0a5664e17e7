"""collection settings per device group and the attempts terminals upload for inspection (issue 13)

Revision ID: 0003_inspection
Revises: 0002_fleet
Create Date: 2026-12-01 21:30:00

``collection_settings``: one row per device group that turned collection on (sample rate, which attempts,
near-threshold band, retention). ``attempts``: one row per uploaded attempt; its crops live in the object
store under ``attempts/<device>/<id>/``. Indexes serve the pending queue (status, id), the per-device rate
limit and erasure (device_id, created_at) and the retention sweep (expires_at).
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0003_inspection"
down_revision = "0002_fleet"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "collection_settings",
        sa.Column("group", sa.String(length=128), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("sample_rate", sa.Float(), nullable=False),
        sa.Column("attempts", sa.String(length=16), nullable=False),
        sa.Column("near_threshold_band", sa.Float(), nullable=False),
        sa.Column("retention_days", sa.Integer(), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("group", name=op.f("pk_collection_settings")),
    )
    op.create_table(
        "attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("group", sa.String(length=128), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=True),
        sa.Column("user", sa.String(length=128), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("decision", sa.String(length=8), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("captured_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("probe_key", sa.Text(), nullable=False),
        sa.Column("reference_key", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=True),
        sa.Column("labelled_by", sa.String(length=128), nullable=True),
        sa.Column("labelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_attempts_device_id_devices"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_attempts_model_version_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_attempts")),
    )
    op.create_index("ix_attempts_device_id_created_at", "attempts", ["device_id", "created_at"], unique=False)
    op.create_index(op.f("ix_attempts_expires_at"), "attempts", ["expires_at"], unique=False)
    op.create_index("ix_attempts_status_id", "attempts", ["status", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_attempts_status_id", table_name="attempts")
    op.drop_index(op.f("ix_attempts_expires_at"), table_name="attempts")
    op.drop_index("ix_attempts_device_id_created_at", table_name="attempts")
    op.drop_table("attempts")
    op.drop_table("collection_settings")
