"""indexes for the fleet's hot paths: list filters sorted by id, rollout progress per deployment

Revision ID: 0002_fleet
Revises: 0001
Create Date: 2026-12-01 05:00:00

Single-column indexes on a list filter (devices.group, deployments.group, audit_events.action) become
(filter, id) so a filtered page sorted by id reads only its rows whatever the table's size. A rollout's
progress ("any canary unfinished?", "any device unfinished?") is an index lookup instead of a read of every
device's row.
"""

from __future__ import annotations

from alembic import op

revision = "0002_fleet"
down_revision = "0001"
branch_labels = None
depends_on = None

REPLACED = [
    # (old single-column index, table, column, new composite index)
    ("ix_devices_group", "devices", "group", "ix_devices_group_id"),
    ("ix_deployments_group", "deployments", "group", "ix_deployments_group_id"),
    ("ix_audit_events_action", "audit_events", "action", "ix_audit_events_action_id"),
]
ADDED = [
    ("ix_audit_events_actor_id", "audit_events", ["actor", "id"]),
    ("ix_audit_events_target_id", "audit_events", ["target_type", "target_id", "id"]),
    ("ix_device_deployments_deployment_status", "device_deployments", ["deployment_id", "status"]),
    (
        "ix_device_deployments_deployment_phase_status",
        "device_deployments",
        ["deployment_id", "phase", "status"],
    ),
]


def upgrade() -> None:
    for old, table, column, new in REPLACED:
        op.create_index(new, table, [column, "id"], unique=False)
        op.drop_index(old, table_name=table)
    for name, table, columns in ADDED:
        op.create_index(name, table, columns, unique=False)


def downgrade() -> None:
    for name, table, _columns in reversed(ADDED):
        op.drop_index(name, table_name=table)
    for old, table, column, new in reversed(REPLACED):
        op.create_index(old, table, [column], unique=False)
        op.drop_index(new, table_name=table)
