"""The device side of deployments: a device's own assignment and the artifacts it may download."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from facefleet.platform.db.base import utcnow
from facefleet.platform.db.models import Deployment, Device, DeviceDeployment, ModelVersion
from facefleet.platform.deployments.schemas import AssignedArtifact, AssignedModel, AssignmentRead
from facefleet.platform.deployments.service import deployment_rows, is_released, rollout_stage
from facefleet.platform.errors import NotFoundError, PermissionDeniedError
from facefleet.platform.store import ObjectStore

CARD_FILE = "model_card.json"


@dataclass(frozen=True)
class ArtifactLocation:
    key: str
    sha256: str
    size: int


def current_rollout(session: Session, device: Device) -> tuple[Deployment, DeviceDeployment] | None:
    """The device's row in its group's latest live deployment; a device that joined late is added to it."""
    deployment = session.scalar(
        select(Deployment)
        .where(Deployment.group == device.group, Deployment.status != "superseded")
        .order_by(Deployment.id.desc())
        .limit(1)
    )
    if deployment is None:
        return None
    row = session.scalar(
        select(DeviceDeployment).where(
            DeviceDeployment.deployment_id == deployment.id, DeviceDeployment.device_id == device.id
        )
    )
    if row is None:
        if deployment.status == "stopped":
            return None
        row = DeviceDeployment(
            deployment_id=deployment.id,
            device_id=device.id,
            phase="all",
            status="pending",
            previous_model_version_id=device.model_version_id,
            message="joined after the rollout began",
            updated_at=utcnow(),
        )
        session.add(row)
        session.flush()
    return deployment, row


def device_assignment(session: Session, device: Device, *, store: ObjectStore) -> AssignmentRead:
    """What this device (and only it) should do now."""
    found = current_rollout(session, device)
    if found is None:
        return AssignmentRead(deployment_id=None, action="none")
    deployment, row = found
    target_id = _target_version_id(session, deployment, row)
    if target_id is None and not (deployment.status == "stopped" and row.status == "failed"):
        return AssignmentRead(deployment_id=deployment.id, action="none", status=row.status)
    action: Literal["install", "rollback"] = "rollback" if row.status == "failed" else "install"
    model = _assigned_model(session, target_id, store=store) if target_id is not None else None
    return AssignmentRead(deployment_id=deployment.id, action=action, status=row.status, model=model)


def _target_version_id(session: Session, deployment: Deployment, row: DeviceDeployment) -> int | None:
    """The version the device should fetch: the deployed one, its previous one to roll back, or none."""
    if row.status == "failed":
        return row.previous_model_version_id if deployment.status == "stopped" else None
    if row.status not in ("pending", "downloading", "installed"):
        return None
    if row.status != "installed" and deployment.status == "stopped":
        return None
    stage = rollout_stage(deployment, deployment_rows(session, deployment.id))
    return deployment.model_version_id if is_released(stage, row) else None


def _assigned_model(session: Session, model_version_id: int, *, store: ObjectStore) -> AssignedModel:
    version = session.get(ModelVersion, model_version_id)
    if version is None:
        raise NotFoundError(f"model version {model_version_id} was deleted; ask an admin to redeploy")
    card_bytes = store.get_bytes(card_key(version))
    artifacts = [
        AssignedArtifact(
            file=name,
            sha256=entry["sha256"],
            size=int(entry["size"]),
            url=f"/v1/device/artifacts/{name}?model_version_id={version.id}",
        )
        for name, entry in sorted(version.artifacts.items())
        if name != CARD_FILE
    ]
    return AssignedModel(
        model_version_id=version.id,
        name=version.name,
        version=version.version,
        card_b64=base64.b64encode(card_bytes).decode(),
        signature=version.signature or "",
        artifacts=artifacts,
    )


def card_key(version: ModelVersion) -> str:
    entry = version.artifacts.get(CARD_FILE)
    if entry:
        return str(entry["key"])
    any_key = str(next(iter(version.artifacts.values()))["key"])
    return any_key.rsplit("/", 1)[0] + "/" + CARD_FILE


def artifact_for_device(
    session: Session, device: Device, *, file: str, model_version_id: int
) -> ArtifactLocation:
    """Where ``file`` of ``model_version_id`` lives, if and only if that version is this device's target."""
    found = current_rollout(session, device)
    target = _target_version_id(session, *found) if found else None
    if target != model_version_id:
        raise PermissionDeniedError(
            f"model version {model_version_id} is not assigned to this device; fetch /v1/device/assignment"
        )
    version = session.get(ModelVersion, model_version_id)
    entry = version.artifacts.get(file) if version else None
    if entry is None or file == CARD_FILE:
        raise NotFoundError(f"model version {model_version_id} has no artifact {file!r}")
    return ArtifactLocation(key=str(entry["key"]), sha256=str(entry["sha256"]), size=int(entry["size"]))
