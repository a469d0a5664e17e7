"""Deployments: create (superseding the group's last one), canary gating, failure limit, stop and rollback."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, bindparam, exists, func, insert, select, update
from sqlalchemy.orm import Session

from facefleet.platform import audit
from facefleet.platform.db.base import utcnow
from facefleet.platform.db.models import Deployment, Device, DeviceDeployment, ModelVersion
from facefleet.platform.db.paging import fetch_page
from facefleet.platform.deployments.notify import notify_admins
from facefleet.platform.deployments.pacing import turn_has_come
from facefleet.platform.deployments.schemas import DeploymentCreate, DeploymentRead, DeviceRolloutRead
from facefleet.platform.errors import ConflictError, InvalidInputError, NotFoundError

FINAL_STATUSES = frozenset({"installed", "failed", "rolled_back", "superseded"})
UNFINISHED_STATUSES = ("pending", "downloading")  # every other status is final
# Which status a device may report from which current status.
ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    "downloading": frozenset({"pending", "downloading"}),
    "installed": frozenset({"pending", "downloading", "installed"}),
    "failed": frozenset({"pending", "downloading", "failed"}),
    "rolled_back": frozenset({"failed", "rolled_back"}),
}


# Reports after which a rollout or its canary phase may be over. They lock the deployment's row before they
# write, so they run one after another per deployment: the last of two devices finishing at the same moment
# sees the other's row finished (each alone would see the other's uncommitted row as unfinished, and the
# rollout would stay in progress). Lock order everywhere: the deployment, then device rows.
FINISHING_STATUSES = frozenset({"installed", "failed", "rolled_back"})

# A canary rollout's remaining devices are released when no canary is left unfinished; that moment starts
# their paced clock. One guarded UPDATE (both the ORM and the Core report path run it; the first wins).
RELEASE_REST = (
    update(Deployment)
    .where(
        Deployment.id == bindparam("deployment_id"),
        Deployment.rest_released_at.is_(None),
        ~exists().where(
            DeviceDeployment.deployment_id == bindparam("deployment_id"),
            DeviceDeployment.phase == "canary",
            DeviceDeployment.status.in_(UNFINISHED_STATUSES),
        ),
    )
    .values(rest_released_at=bindparam("now"))
    .execution_options(synchronize_session=False)
)


def release_rest_if_canaries_done(bind: Session | Connection, deployment_id: int) -> None:
    """Start the "rest" phase's clock once every canary has finished (a no-op before, and after once)."""
    bind.execute(RELEASE_REST, {"deployment_id": deployment_id, "now": utcnow()})


@dataclass
class DeploymentSummary:
    """A deployment with how many of its devices are in each phase and status, without their rows."""

    deployment: Deployment
    stage: str
    counts: dict[str, dict[str, int]]  # phase -> status -> devices


@dataclass
class DeploymentView(DeploymentSummary):
    """A summary with every device's row."""

    rows: list[tuple[DeviceDeployment, str]]  # (row, device name)


def create_deployment(
    session: Session,
    *,
    model_version_id: int,
    group: str,
    strategy: str = "all",
    canary_percent: float = 0.0,
    max_failure_rate: float = 0.0,
    release_per_minute: int | None = None,
    created_by: str = "",
) -> Deployment:
    """Roll ``model_version_id`` out to ``group``; the group's in-progress deployment is superseded.

    ``release_per_minute`` paces it: each phase's devices (canaries, then the rest) get the new model
    that many a minute, in device order, instead of all at once.
    """
    version = session.get(ModelVersion, model_version_id)
    if version is None:
        raise NotFoundError(f"no model version with id {model_version_id}", field="model_version_id")
    if not version.signature or not version.artifacts:
        raise InvalidInputError(
            f"model version {version.name} v{version.version} has no signed artifacts; export it first",
            field="model_version_id",
        )
    # Ids and current models only, one multi-row INSERT: 10,000 ORM objects took seconds of one worker.
    devices = session.execute(
        select(Device.id, Device.model_version_id)
        .where(Device.group == group, Device.status != "disabled")
        .order_by(Device.id)
    ).all()
    if not devices:
        raise InvalidInputError(f"group {group!r} has no enabled devices; register one first", field="group")
    _supersede_group(session, group=group)
    deployment = Deployment(
        model_version_id=model_version_id,
        group=group,
        strategy=strategy,
        canary_percent=canary_percent,
        max_failure_rate=max_failure_rate,
        release_per_minute=release_per_minute,
        status="in_progress",
        created_by=created_by,
    )
    session.add(deployment)
    session.flush()
    canary_count = math.ceil(len(devices) * canary_percent / 100) if strategy == "canary" else 0
    now = utcnow()
    session.execute(
        insert(DeviceDeployment),
        [
            {
                "deployment_id": deployment.id,
                "device_id": device_id,
                "phase": "all" if strategy == "all" else ("canary" if index < canary_count else "rest"),
                "release_slot": index if index < canary_count or strategy == "all" else index - canary_count,
                "status": "pending",
                "previous_model_version_id": previous,
                "message": "",
                "updated_at": now,
            }
            for index, (device_id, previous) in enumerate(devices)
        ],
    )
    session.flush()
    return deployment


def _supersede_group(session: Session, *, group: str) -> None:
    """The previous rollout stops handing out work; devices mid-way simply get the new assignment."""
    running = session.scalars(
        select(Deployment).where(Deployment.group == group, Deployment.status == "in_progress")
    ).all()
    for old in running:
        old.status = "superseded"
        old.finished_at = utcnow()
        rows = session.scalars(
            select(DeviceDeployment).where(
                DeviceDeployment.deployment_id == old.id,
                DeviceDeployment.status.in_(("pending", "downloading")),
            )
        ).all()
        for row in rows:
            row.status = "superseded"
            row.message = "superseded by a newer deployment"
            row.updated_at = utcnow()


def deployment_rows(session: Session, deployment_id: int) -> list[DeviceDeployment]:
    query = select(DeviceDeployment).where(DeviceDeployment.deployment_id == deployment_id)
    return list(session.scalars(query.order_by(DeviceDeployment.device_id)).all())


def rollout_stage(deployment: Deployment, counts: dict[str, dict[str, int]]) -> str:
    """``canary`` while a canary is still working, then ``rollout``; ``done`` once finished. ``counts``:
    the deployment's devices per phase and status."""
    if deployment.status != "in_progress":
        return "done"
    canaries = counts.get("canary", {})
    return "canary" if any(n for status, n in canaries.items() if status not in FINAL_STATUSES) else "rollout"


def current_stage(session: Session, deployment: Deployment) -> str:
    """``rollout_stage`` without loading the rows: one indexed EXISTS over the unfinished canaries."""
    if deployment.status != "in_progress":
        return "done"
    return "canary" if _any_unfinished(session, deployment.id, phase="canary") else "rollout"


def _any_unfinished(session: Session, deployment_id: int, *, phase: str | None = None) -> bool:
    """Whether a device row of the deployment is still pending or downloading (index-only, stops at one)."""
    query = select(DeviceDeployment.id).where(
        DeviceDeployment.deployment_id == deployment_id, DeviceDeployment.status.in_(UNFINISHED_STATUSES)
    )
    if phase is not None:
        query = query.where(DeviceDeployment.phase == phase)
    return session.scalar(query.limit(1)) is not None


def report_device_status(
    session: Session, device: Device, *, deployment_id: int, status: str, message: str = ""
) -> DeviceDeployment:
    """Record a device's progress, then advance, complete or stop the rollout."""
    if status in FINISHING_STATUSES:  # see FINISHING_STATUSES; SQLite serialises writers anyway
        session.get(Deployment, deployment_id, with_for_update=True, populate_existing=True)
    row = session.scalar(
        select(DeviceDeployment).where(
            DeviceDeployment.deployment_id == deployment_id, DeviceDeployment.device_id == device.id
        )
    )
    if row is None:
        raise NotFoundError(f"this device has no part in deployment {deployment_id}")
    if row.status not in ALLOWED_TRANSITIONS[status]:
        raise ConflictError(
            f"cannot report {status!r} while this device is {row.status!r} in deployment "
            f"{deployment_id}; fetch the assignment again"
        )
    deployment = session.get(Deployment, deployment_id)
    assert deployment is not None  # the row's foreign key guarantees it
    row.status = status
    row.message = message
    row.updated_at = utcnow()
    if status == "installed":
        device.model_version_id = deployment.model_version_id
    elif status == "rolled_back":
        device.model_version_id = row.previous_model_version_id
    session.flush()
    if deployment.status == "in_progress":
        if row.phase == "canary" and deployment.rest_released_at is None:
            release_rest_if_canaries_done(session, deployment.id)
        advance(session, deployment, reported=status)
    return row


def advance(session: Session, deployment: Deployment, *, reported: str) -> None:
    """Stop the rollout over the failure limit, or complete it once no device is left to finish.

    Costs a few indexed queries, not a read of every device row: the failure rate can only rise when a
    device reports ``failed`` (only then are the rows counted), and completion is "no unfinished row".
    """
    if reported == "failed":
        stage = current_stage(session, deployment)
        counts = session.execute(
            select(DeviceDeployment.phase, DeviceDeployment.status, func.count())
            .where(DeviceDeployment.deployment_id == deployment.id)
            .group_by(DeviceDeployment.phase, DeviceDeployment.status)
        ).all()
        released = sum(n for phase, _status, n in counts if phase != "rest" or stage in ("rollout", "done"))
        failed_count = sum(
            n for phase, status, n in counts if status == "failed" and (phase != "rest" or stage != "canary")
        )
        if released and failed_count / released > deployment.max_failure_rate:
            query = select(DeviceDeployment).where(
                DeviceDeployment.deployment_id == deployment.id, DeviceDeployment.status == "failed"
            )
            if stage == "canary":
                query = query.where(DeviceDeployment.phase != "rest")
            failed = list(session.scalars(query.order_by(DeviceDeployment.device_id)).all())
            _stop(session, deployment, failed=failed, released=released)
            session.flush()
            return
    if not _any_unfinished(session, deployment.id):
        deployment.status = "completed"
        deployment.finished_at = utcnow()
        total = (
            session.scalar(select(func.count()).where(DeviceDeployment.deployment_id == deployment.id)) or 0
        )
        installed = (
            session.scalar(
                select(func.count()).where(
                    DeviceDeployment.deployment_id == deployment.id, DeviceDeployment.status == "installed"
                )
            )
            or 0
        )
        notify_admins(
            session,
            event="deployment.finished",
            payload={
                "deployment_id": deployment.id,
                "group": deployment.group,
                "status": "completed",
                "installed": installed,
                "failed": total - installed,
            },
        )
    session.flush()


def _stop(session: Session, deployment: Deployment, *, failed: list[DeviceDeployment], released: int) -> None:
    """Over the failure limit: no new installs; failed devices are told (by their assignment) to roll back."""
    deployment.status = "stopped"
    deployment.finished_at = utcnow()
    for row in failed:
        row.message = (
            row.message + " | " if row.message else ""
        ) + "rollout stopped: roll back to previous version"
    notify_admins(
        session,
        event="deployment.stopped",
        payload={
            "deployment_id": deployment.id,
            "group": deployment.group,
            "model_version_id": deployment.model_version_id,
            "failed": len(failed),
            "updated": released,
            "failure_rate": round(len(failed) / released, 4),
            "max_failure_rate": deployment.max_failure_rate,
            "failed_devices": [row.device_id for row in failed],
        },
    )


def _released(deployment: Deployment, stage: str, row: DeviceDeployment, now: datetime) -> bool:
    """Whether the device's turn has come (its phase's stage and the pacing); a device that began has."""
    if row.status != "pending" or deployment.status != "in_progress":
        return row.status != "pending"
    if row.phase == "rest" and stage == "canary":
        return False
    return turn_has_come(deployment, row, now)


def _rollout_row(
    deployment: Deployment, stage: str, row: DeviceDeployment, name: str, now: datetime
) -> DeviceRolloutRead:
    return DeviceRolloutRead(
        device_id=row.device_id,
        device_name=name,
        phase=row.phase,
        status=row.status,
        released=_released(deployment, stage, row, now),
        previous_model_version_id=row.previous_model_version_id,
        message=row.message,
        updated_at=row.updated_at,
    )


def _read(summary: DeploymentSummary, devices: list[DeviceRolloutRead] | None) -> DeploymentRead:
    d, stage, counts = summary.deployment, summary.stage, summary.counts
    return DeploymentRead(
        id=d.id,
        model_version_id=d.model_version_id,
        group=d.group,
        strategy=d.strategy,
        canary_percent=d.canary_percent,
        max_failure_rate=d.max_failure_rate,
        release_per_minute=d.release_per_minute,
        rest_released_at=d.rest_released_at,
        status=d.status,
        stage=stage,
        created_by=d.created_by,
        created_at=d.created_at,
        finished_at=d.finished_at,
        device_count=sum(n for statuses in counts.values() for n in statuses.values()),
        device_counts=counts,
        devices=devices,
    )


def deployment_read(view: DeploymentView) -> DeploymentRead:
    """The deployment with each device's rollout row (``GET /v1/deployments/{id}``, ``deployments show``)."""
    now = utcnow()
    devices = [_rollout_row(view.deployment, view.stage, row, name, now) for row, name in view.rows]
    return _read(view, devices)


def summary_read(summary: DeploymentSummary) -> DeploymentRead:
    """The deployment with counts only (lists and the create answer: their size does not grow with the
    group; ``devices`` is null)."""
    return _read(summary, None)


def summarize(session: Session, deployments: list[Deployment]) -> list[DeploymentSummary]:
    """Summaries of ``deployments``: one grouped, index-only count over their device rows."""
    counts: dict[int, dict[str, dict[str, int]]] = {d.id: {} for d in deployments}
    if deployments:
        grouped = session.execute(
            select(
                DeviceDeployment.deployment_id, DeviceDeployment.phase, DeviceDeployment.status, func.count()
            )
            .where(DeviceDeployment.deployment_id.in_(list(counts)))
            .group_by(DeviceDeployment.deployment_id, DeviceDeployment.phase, DeviceDeployment.status)
        ).all()
        for deployment_id, phase, status, count in grouped:
            counts[deployment_id].setdefault(phase, {})[status] = int(count)
    return [DeploymentSummary(d, rollout_stage(d, counts[d.id]), counts[d.id]) for d in deployments]


def list_deployment_devices(
    session: Session,
    *,
    deployment_id: int,
    status: str | None = None,
    phase: str | None = None,
    limit: int = 50,
    offset: int = 0,
    after: int | None = None,
) -> tuple[list[DeviceRolloutRead], int | None]:
    """One page of a deployment's device rows in device id order (``after``: the last device id seen)."""
    deployment = _deployment(session, deployment_id)
    stage = current_stage(session, deployment)
    query = select(DeviceDeployment).where(DeviceDeployment.deployment_id == deployment_id)
    if status is not None:
        query = query.where(DeviceDeployment.status == status)
    if phase is not None:
        query = query.where(DeviceDeployment.phase == phase)
    rows, total = fetch_page(
        session,
        query.order_by(DeviceDeployment.device_id),
        limit=limit,
        offset=offset,
        after=after,
        key=DeviceDeployment.device_id,
    )
    names = dict(
        session.execute(
            select(Device.id, Device.name).where(Device.id.in_([r.device_id for r in rows]))
        ).all()
    )
    now = utcnow()
    return [_rollout_row(deployment, stage, row, names.get(row.device_id, ""), now) for row in rows], total


def get_deployment_summary(session: Session, *, deployment_id: int) -> DeploymentSummary:
    """The deployment with its device counts, without loading its device rows."""
    return summarize(session, [_deployment(session, deployment_id)])[0]


def get_deployment(session: Session, *, deployment_id: int) -> DeploymentView:
    return _view(session, _deployment(session, deployment_id))


def _deployment(session: Session, deployment_id: int) -> Deployment:
    deployment = session.get(Deployment, deployment_id)
    if deployment is None:
        raise NotFoundError(f"no deployment with id {deployment_id}")
    return deployment


def _view(session: Session, deployment: Deployment) -> DeploymentView:
    query = (
        select(DeviceDeployment, Device.name)
        .join(Device, Device.id == DeviceDeployment.device_id)
        .where(DeviceDeployment.deployment_id == deployment.id)
        .order_by(DeviceDeployment.device_id)
    )
    pairs = [(row, name) for row, name in session.execute(query).all()]
    counts: dict[str, dict[str, int]] = {}
    for row, _name in pairs:
        statuses = counts.setdefault(row.phase, {})
        statuses[row.status] = statuses.get(row.status, 0) + 1
    return DeploymentView(deployment, rollout_stage(deployment, counts), counts, pairs)


def list_deployments(
    session: Session,
    *,
    group: str | None = None,
    limit: int = 50,
    offset: int = 0,
    after: int | None = None,
) -> tuple[list[DeploymentSummary], int | None]:
    """One page of deployments, newest first, each with its device counts (not its device rows)."""
    query = select(Deployment)
    if group is not None:
        query = query.where(Deployment.group == group)
    deployments, total = fetch_page(
        session,
        query.order_by(Deployment.id.desc()),
        limit=limit,
        offset=offset,
        after=after,
        key=Deployment.id,
        descending=True,
    )
    return summarize(session, list(deployments)), total


def create_deployment_audited(session: Session, body: DeploymentCreate, *, actor: str) -> DeploymentRead:
    """Create a deployment from a validated request and record who did it (the API and CLI path)."""
    deployment = create_deployment(
        session,
        model_version_id=body.model_version_id,
        group=body.group,
        strategy=body.strategy,
        canary_percent=body.canary_percent,
        max_failure_rate=body.max_failure_rate,
        release_per_minute=body.release_per_minute,
        created_by=actor,
    )
    audit.record(session, actor, "deployments.create", "deployment", deployment.id, body.model_dump())
    return summary_read(summarize(session, [deployment])[0])
