"""Console pages for the fleet: devices, deployments (per-device state, canary progress) and rollback."""

from __future__ import annotations

from collections import Counter
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import HTMLResponse, Response

from facefleet.api.deps import DbSession
from facefleet.platform.db.models import ModelVersion
from facefleet.platform.deployments import service as deployments
from facefleet.platform.deployments.schemas import DeploymentCreate, DeploymentRead
from facefleet.platform.devices import service as devices
from facefleet.platform.errors import FacefleetError, InvalidInputError
from facefleet.ui.web import ConsoleUser, ConsoleWriter, back

router = APIRouter(prefix="/ui", include_in_schema=False)
DeploymentId = Annotated[int, Path(ge=1, le=2_000_000_000)]


def version_labels(session: DbSession, ids: set[int | None]) -> dict[int, str]:
    """model version id -> 'name vN' for the ids shown on a page."""
    wanted = [i for i in ids if i is not None]
    labels = {}
    for model_id in wanted:
        model = session.get(ModelVersion, model_id)
        labels[model_id] = f"{model.name} v{model.version}" if model else f"#{model_id}"
    return labels


@router.get("/devices", response_class=HTMLResponse)
def devices_page(console: ConsoleUser, session: DbSession) -> HTMLResponse:
    rows, total = devices.list_devices(session, limit=500)
    labels = version_labels(session, {row.model_version_id for row in rows})
    return console.render(
        "devices.html", title="Devices", nav="devices", devices=rows, total=total, labels=labels
    )


def canary_progress(view: DeploymentRead) -> dict[str, int]:
    """How many devices of each phase finished (installed) or failed, for the progress bars."""
    out: dict[str, int] = {}
    for phase in ("canary", "rest", "all"):
        statuses = view.device_counts.get(phase, {})
        out[f"{phase}_total"] = sum(statuses.values())
        out[f"{phase}_installed"] = statuses.get("installed", 0)
        out[f"{phase}_failed"] = statuses.get("failed", 0) + statuses.get("rolled_back", 0)
    return out


@router.get("/deployments", response_class=HTMLResponse)
def deployments_page(console: ConsoleUser, session: DbSession) -> HTMLResponse:
    summaries, total = deployments.list_deployments(session, limit=200)
    reads = [deployments.summary_read(summary) for summary in summaries]
    labels = version_labels(session, {read.model_version_id for read in reads})
    return console.render(
        "deployments.html",
        title="Deployments",
        nav="deployments",
        deployments=reads,
        progress={read.id: canary_progress(read) for read in reads},
        labels=labels,
        total=total,
    )


def rollback_target(view: DeploymentRead) -> int:
    """The model version most of the deployment's devices ran before it (what a rollback redeploys)."""
    previous = Counter(
        row.previous_model_version_id
        for row in view.devices or []
        if row.previous_model_version_id is not None
        and row.previous_model_version_id != view.model_version_id
    )
    if not previous:
        raise InvalidInputError(
            f"deployment {view.id}: no device ran another model before it; nothing to roll back to",
            field="deployment_id",
        )
    return previous.most_common(1)[0][0]


@router.get("/deployments/{deployment_id}", response_class=HTMLResponse)
def deployment_page(deployment_id: DeploymentId, console: ConsoleUser, session: DbSession) -> HTMLResponse:
    read = deployments.deployment_read(deployments.get_deployment(session, deployment_id=deployment_id))
    ids = {read.model_version_id} | {row.previous_model_version_id for row in read.devices or []}
    try:
        target: int | None = rollback_target(read)
    except InvalidInputError:
        target = None
    return console.render(
        "deployment.html",
        title=f"Deployment {deployment_id}",
        nav="deployments",
        deployment=read,
        progress=canary_progress(read),
        labels=version_labels(session, ids | {target}),
        rollback_to=target,
    )


@router.post("/deployments/{deployment_id}/rollback")
def rollback(deployment_id: DeploymentId, console: ConsoleWriter, session: DbSession) -> Response:
    """Redeploy the previous model version to the whole group (a new deployment, superseding this one)."""
    here = f"/ui/deployments/{deployment_id}"
    try:
        read = deployments.deployment_read(deployments.get_deployment(session, deployment_id=deployment_id))
        target = rollback_target(read)
        created = deployments.create_deployment_audited(
            session,
            DeploymentCreate(model_version_id=target, group=read.group, strategy="all"),
            actor=console.principal.actor,
        )
    except FacefleetError as exc:
        session.rollback()
        return back(here, error=exc.message)
    label = version_labels(session, {target})[target]
    return back(f"/ui/deployments/{created.id}", notice=f"rolling group {read.group!r} back to {label}")
