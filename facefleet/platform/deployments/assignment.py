"""The device side of deployments: a device's own assignment and the artifacts it may download."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from facefleet.platform.db.base import utcnow
from facefleet.platform.db.models import Deployment, Device, DeviceDeployment, ModelVersion
from facefleet.platform.deployments.pacing import turn_has_come
from facefleet.platform.deployments.schemas import AssignedArtifact, AssignedModel, AssignmentRead
from facefleet.platform.deployments.service import current_stage
from facefleet.platform.errors import NotFoundError, PermissionDeniedError
from facefleet.platform.inspections.schemas import AssignedCollection
from facefleet.platform.inspections.service import assigned_collection
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


@dataclass(frozen=True)
class AssignmentState:
    """Everything an assignment answer depends on, read without touching the store.

    A model version's card (and so its artifacts and signature) is fixed by ``card_sha256``, so two equal
    states always render the same answer: the ETag is a hash of the state, and an unchanged poll is a 304.
    """

    deployment_id: int | None
    action: Literal["install", "rollback", "none"]
    status: str | None = None
    target_id: int | None = None
    card_sha256: str = ""
    collection: AssignedCollection = field(default_factory=AssignedCollection)  # what to upload (issue 13)

    @property
    def etag(self) -> str:
        text = f"{self.deployment_id}|{self.action}|{self.status}|{self.target_id}|{self.card_sha256}"
        text += "|" + self.collection.model_dump_json()
        return '"' + hashlib.sha256(text.encode()).hexdigest()[:32] + '"'


class AssignedModelCache:
    """Rendered model parts of assignments (card bytes from the store, artifact list) by version and card.

    Card bytes never change for a given ``card_sha256``, so entries never go stale; the cache is bounded.
    """

    def __init__(self, max_entries: int = 32) -> None:
        self.max_entries = max_entries
        self._entries: dict[tuple[int, str], AssignedModel] = {}

    def get(self, key: tuple[int, str]) -> AssignedModel | None:
        return self._entries.get(key)

    def put(self, key: tuple[int, str], model: AssignedModel) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.pop(next(iter(self._entries)))
        self._entries[key] = model


def assignment_state(session: Session, device: Device) -> AssignmentState:
    """What this device (and only it) should do now, as the few values the answer depends on."""
    collection = assigned_collection(session, device.group)
    found = current_rollout(session, device)
    if found is None:
        return AssignmentState(deployment_id=None, action="none", collection=collection)
    deployment, row = found
    return state_for(
        deployment_id=deployment.id,
        deployment_status=deployment.status,
        row_status=row.status,
        target_id=_target_version_id(session, deployment, row),
        collection=collection,
        card_of=lambda version_id: (
            session.scalar(select(ModelVersion.card_sha256).where(ModelVersion.id == version_id)) or ""
        ),
    )


def state_for(
    *,
    deployment_id: int,
    deployment_status: str,
    row_status: str,
    target_id: int | None,
    collection: AssignedCollection,
    card_of: Callable[[int], str],
) -> AssignmentState:
    """The state of a device in a deployment whose target version is known; ``card_of`` gives a version's
    card hash (the ORM path reads it, the Core poll has it in its row)."""
    if target_id is None and not (deployment_status == "stopped" and row_status == "failed"):
        return AssignmentState(
            deployment_id=deployment_id, action="none", status=row_status, collection=collection
        )
    action: Literal["install", "rollback"] = "rollback" if row_status == "failed" else "install"
    return AssignmentState(
        deployment_id=deployment_id,
        action=action,
        status=row_status,
        target_id=target_id,
        card_sha256=card_of(target_id) if target_id is not None else "",
        collection=collection,
    )


def render_assignment(
    session: Session,
    state: AssignmentState,
    *,
    store: ObjectStore,
    cache: AssignedModelCache | None = None,
) -> AssignmentRead:
    """The full answer for ``state``: the model part (card from the store) only when there is a target."""
    model = None
    if state.target_id is not None:
        key = (state.target_id, state.card_sha256)
        model = cache.get(key) if cache is not None and state.card_sha256 else None
        if model is None:
            model = _assigned_model(session, state.target_id, store=store)
            if cache is not None and state.card_sha256:
                cache.put(key, model)
    return AssignmentRead(
        deployment_id=state.deployment_id,
        action=state.action,
        status=state.status,
        model=model,
        collection=state.collection,
    )


def device_assignment(session: Session, device: Device, *, store: ObjectStore) -> AssignmentRead:
    """What this device (and only it) should do now."""
    return render_assignment(session, assignment_state(session, device), store=store)


def _target_version_id(session: Session, deployment: Deployment, row: DeviceDeployment) -> int | None:
    """The version the device should fetch: the deployed one, its previous one to roll back, or none."""
    # Only a "rest" device of a live rollout needs the stage (one EXISTS over the unfinished canaries).
    needs_stage = row.phase == "rest" and deployment.status == "in_progress"
    return target_version_id(
        deployment_status=deployment.status,
        deployment_model_id=deployment.model_version_id,
        row_status=row.status,
        row_phase=row.phase,
        previous_model_id=row.previous_model_version_id,
        stage=current_stage(session, deployment) if needs_stage else "done",
        paced=turn_has_come(deployment, row),
    )


def target_version_id(
    *,
    deployment_status: str,
    deployment_model_id: int,
    row_status: str,
    row_phase: str,
    previous_model_id: int | None,
    stage: str,
    paced: bool = True,
) -> int | None:
    """``_target_version_id`` on plain values (``stage`` as ``current_stage`` says; the Core poll uses it).

    ``paced``: whether a still-pending device's turn has come (``paced_release``); a device that has begun
    (downloading, installed) keeps its target.
    """
    if row_status == "failed":
        return previous_model_id if deployment_status == "stopped" else None
    if row_status not in ("pending", "downloading", "installed"):
        return None
    if row_status != "installed" and deployment_status == "stopped":
        return None
    if row_status == "pending" and deployment_status == "in_progress" and not paced:
        return None
    if row_phase != "rest":  # released whatever the stage: no need to look at the other devices
        return deployment_model_id
    return deployment_model_id if stage in ("rollout", "done") else None


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
