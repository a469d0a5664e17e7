"""ORM models for the whole data model (design.md §3). The schema changes only through Alembic."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from facefleet.platform.db.base import Base, utcnow

# ---------------------------------------------------------------- datasets


class Dataset(Base):
    """A named face dataset; ``kind`` is ``train`` (identities), ``verification`` (pairs), ``landmarks``
    (points) or ``inspection`` (labelled terminal attempts, built by inspections/sets.py)."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(16), default="train")
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    versions: Mapped[list[DatasetVersion]] = relationship(
        back_populates="dataset", lazy="raise", order_by="DatasetVersion.version"
    )


class DatasetVersion(Base):
    """An immutable, content-addressed version of a dataset."""

    __tablename__ = "dataset_versions"
    __table_args__ = (
        UniqueConstraint("dataset_id", "version", name="uq_dataset_versions_dataset_version"),
        UniqueConstraint("dataset_id", "content_hash", name="uq_dataset_versions_dataset_content"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    source_uri: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(32))
    # pending | validating | ready | invalid | erased (an inspection set whose crops an erasure removed)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    identity_count: Mapped[int] = mapped_column(Integer, default=0)
    image_count: Mapped[int] = mapped_column(Integer, default=0)
    pair_count: Mapped[int] = mapped_column(Integer, default=0)
    content_hash: Mapped[str] = mapped_column(String(64))
    manifest_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    report: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    dataset: Mapped[Dataset] = relationship(back_populates="versions", lazy="raise")


class OutboxEvent(Base):
    """Domain events for other processes (the scheduler) to consume, e.g. ``dataset_version.ready``."""

    __tablename__ = "outbox_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(nullable=True)


# ---------------------------------------------------------------- runs


class Run(Base):
    """A training run; the database is the truth for its status whatever the launcher."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    trigger: Mapped[str] = mapped_column(String(16), default="manual")
    policy_id: Mapped[int | None] = mapped_column(
        ForeignKey("retrain_policies.id", ondelete="SET NULL"), nullable=True, index=True
    )
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    stage: Mapped[str] = mapped_column(String(32), default="")
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    eta_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    launcher: Mapped[str] = mapped_column(String(16), default="local")
    launcher_job_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(nullable=True)

    datasets: Mapped[list[RunDataset]] = relationship(
        back_populates="run", lazy="raise", order_by="RunDataset.position", cascade="all, delete-orphan"
    )


class RunDataset(Base):
    """A dataset version used by a run: ``role`` train (with its class offset) or verification."""

    __tablename__ = "run_datasets"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    role: Mapped[str] = mapped_column(String(16), default="train")
    dataset_version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id"), index=True)
    class_offset: Mapped[int] = mapped_column(Integer, default=0)
    num_classes: Mapped[int] = mapped_column(Integer, default=0)

    run: Mapped[Run] = relationship(back_populates="datasets", lazy="raise")


class RunMetric(Base):
    __tablename__ = "run_metrics"
    __table_args__ = (Index("ix_run_metrics_run_name_step", "run_id", "name", "step"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(128))
    value: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# ---------------------------------------------------------------- models


class ModelVersion(Base):
    """A registered model: artifacts in the store under models/<name>/<version>/."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_model_versions_name_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int] = mapped_column(Integer)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), nullable=True)
    artifacts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # file -> {key, sha256, size}
    card_sha256: Mapped[str] = mapped_column(String(64), default="")
    signature: Mapped[str | None] = mapped_column(Text, nullable=True)  # base64 Ed25519 over the card bytes
    eval_summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelAlias(Base):
    """A movable name (``candidate``, ``production``) pointing at one version of a model."""

    __tablename__ = "model_aliases"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


# ---------------------------------------------------------------- retraining


class RetrainPolicy(Base):
    __tablename__ = "retrain_policies"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    triggers: Mapped[list[str]] = mapped_column(
        JSON, default=list
    )  # dataset_added|schedule|metric_drop|manual
    cron: Mapped[str | None] = mapped_column(String(128), nullable=True)
    dataset_selector: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # names, glob, tags
    verification_sets: Mapped[list[str]] = mapped_column(JSON, default=list)
    base_config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    model_name: Mapped[str] = mapped_column(String(128), default="facefleet")
    metric_name: Mapped[str] = mapped_column(String(64), default="accuracy")
    metric_threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    debounce_seconds: Mapped[int] = mapped_column(Integer, default=300)
    auto_promote: Mapped[bool] = mapped_column(Boolean, default=False)
    notify: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # {"webhooks": [...], "emails": [...]}
    pending_trigger: Mapped[str | None] = mapped_column(String(16), nullable=True)
    pending_since: Mapped[datetime | None] = mapped_column(nullable=True)
    last_fired_at: Mapped[datetime | None] = mapped_column(nullable=True)
    next_cron_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_metric_check_at: Mapped[datetime | None] = mapped_column(nullable=True)
    metric_check_interval_seconds: Mapped[int] = mapped_column(Integer, default=3600)
    # Triggers merged into the next run (kind, time, details), and the run now in flight for this policy.
    pending_events: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    active_run_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Lease(Base):
    """A named lease so that several scheduler replicas never do the same work twice."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column()


# ---------------------------------------------------------------- terminals


class Device(Base):
    __tablename__ = "devices"
    __table_args__ = (Index("ix_devices_group_id", "group", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    group: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default="registered")  # registered|active|disabled
    enrollment_token_hash: Mapped[str | None] = mapped_column(String(128), nullable=True)
    enrollment_expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    credential_hash: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    adaptation_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    agent_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"), nullable=True
    )
    health: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    last_seen_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Deployment(Base):
    __tablename__ = "deployments"
    __table_args__ = (Index("ix_deployments_group_id", "group", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    group: Mapped[str] = mapped_column(String(128))
    strategy: Mapped[str] = mapped_column(String(16), default="all")  # all|canary
    canary_percent: Mapped[float] = mapped_column(Float, default=0.0)
    max_failure_rate: Mapped[float] = mapped_column(Float, default=0.0)
    # Paced rollout: at most this many devices of a phase are released per minute (None: all at once).
    release_per_minute: Mapped[int | None] = mapped_column(nullable=True)
    # When the "rest" phase of a canary rollout was released (its paced clock starts there).
    rest_released_at: Mapped[datetime | None] = mapped_column(nullable=True)
    status: Mapped[str] = mapped_column(
        String(16), default="in_progress"
    )  # in_progress|completed|stopped|superseded
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)


class DeviceDeployment(Base):
    __tablename__ = "device_deployments"
    __table_args__ = (
        UniqueConstraint("deployment_id", "device_id", name="uq_device_deployments_deployment_device"),
        Index("ix_device_deployments_deployment_status", "deployment_id", "status"),
        Index("ix_device_deployments_deployment_phase_status", "deployment_id", "phase", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    phase: Mapped[str] = mapped_column(String(16), default="all")  # canary|rest|all
    # Its place in its phase's paced release order (0 first); late joiners get 0.
    release_slot: Mapped[int] = mapped_column(default=0, server_default="0")
    status: Mapped[str] = mapped_column(String(16), default="pending")
    previous_model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"), nullable=True
    )
    message: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


# ---------------------------------------------------------------- access and history


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # admin|viewer
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


class AuditEvent(Base):
    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_action_id", "action", "id"),
        Index("ix_audit_events_actor_id", "actor", "id"),
        Index("ix_audit_events_target_id", "target_type", "target_id", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(128))
    target_type: Mapped[str] = mapped_column(String(64), default="")
    target_id: Mapped[str] = mapped_column(String(128), default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Notification(Base):
    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(primary_key=True)
    event: Mapped[str] = mapped_column(
        String(64)
    )  # run.succeeded|run.failed|model.promoted|deployment.finished
    channel: Mapped[str] = mapped_column(String(16))  # webhook|email
    target: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|sent|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(nullable=True)


# ---------------------------------------------------------------- inspection (issue 13)


class CollectionSetting(Base):
    """Whether a group's terminals upload verification attempts for human inspection, and which ones."""

    __tablename__ = "collection_settings"

    group: Mapped[str] = mapped_column(String(128), primary_key=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    sample_rate: Mapped[float] = mapped_column(Float, default=1.0)
    attempts: Mapped[str] = mapped_column(String(16), default="rejections")  # rejections|near_threshold|all
    near_threshold_band: Mapped[float] = mapped_column(Float, default=0.05)
    retention_days: Mapped[int] = mapped_column(Integer, default=30)
    updated_by: Mapped[str] = mapped_column(String(128), default="")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Attempt(Base):
    """A verification attempt a terminal uploaded: crops in the store under attempts/<device>/<id>/."""

    __tablename__ = "attempts"
    __table_args__ = (
        Index("ix_attempts_status_id", "status", "id"),
        Index("ix_attempts_device_id_created_at", "device_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    group: Mapped[str] = mapped_column(String(128))
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"), nullable=True
    )
    user: Mapped[str] = mapped_column(String(128))
    score: Mapped[float] = mapped_column(Float)
    decision: Mapped[str] = mapped_column(String(8))  # accept|reject
    threshold: Mapped[float] = mapped_column(Float)
    captured_at: Mapped[datetime] = mapped_column()
    probe_key: Mapped[str] = mapped_column(Text)
    reference_key: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|labelled
    verdict: Mapped[str | None] = mapped_column(String(16), nullable=True)  # genuine|impostor|unusable
    labelled_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    labelled_at: Mapped[datetime | None] = mapped_column(nullable=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
