"""/v1/deployments: roll a model version out to a device group (all or canary) and watch each device."""

from __future__ import annotations

from fastapi import APIRouter, Query, status

from facefleet.api.deps import Admin, DbSession, Viewer
from facefleet.api.errors import ERROR_RESPONSES
from facefleet.api.pagination import Page, Pagination
from facefleet.api.params import PathId
from facefleet.platform import audit
from facefleet.platform.deployments import service as deployments
from facefleet.platform.deployments.schemas import DeploymentCreate, DeploymentRead, DeviceRolloutRead

router = APIRouter(prefix="/v1/deployments", tags=["deployments"], responses=ERROR_RESPONSES)


def to_read(view: deployments.DeploymentView) -> DeploymentRead:
    d = view.deployment
    return DeploymentRead(
        id=d.id,
        model_version_id=d.model_version_id,
        group=d.group,
        strategy=d.strategy,
        canary_percent=d.canary_percent,
        max_failure_rate=d.max_failure_rate,
        status=d.status,
        stage=view.stage,
        created_by=d.created_by,
        created_at=d.created_at,
        finished_at=d.finished_at,
        devices=[
            DeviceRolloutRead(
                device_id=row.device_id,
                device_name=name,
                phase=row.phase,
                status=row.status,
                previous_model_version_id=row.previous_model_version_id,
                message=row.message,
                updated_at=row.updated_at,
            )
            for row, name in view.rows
        ],
    )


@router.post("", response_model=DeploymentRead, status_code=status.HTTP_201_CREATED)
def create_deployment(body: DeploymentCreate, session: DbSession, principal: Admin) -> DeploymentRead:
    deployment = deployments.create_deployment(
        session,
        model_version_id=body.model_version_id,
        group=body.group,
        strategy=body.strategy,
        canary_percent=body.canary_percent,
        max_failure_rate=body.max_failure_rate,
        created_by=principal.actor,
    )
    audit.record(
        session, principal.actor, "deployments.create", "deployment", deployment.id, body.model_dump()
    )
    return to_read(deployments.get_deployment(session, deployment_id=deployment.id))


@router.get("", response_model=Page[DeploymentRead])
def list_deployments(
    session: DbSession, _viewer: Viewer, page: Pagination, group: str | None = Query(default=None)
) -> Page[DeploymentRead]:
    views, total = deployments.list_deployments(session, group=group, limit=page.limit, offset=page.offset)
    return Page[DeploymentRead](
        items=[to_read(v) for v in views], total=total, limit=page.limit, offset=page.offset
    )


@router.get("/{deployment_id}", response_model=DeploymentRead)
def get_deployment(deployment_id: PathId, session: DbSession, _viewer: Viewer) -> DeploymentRead:
    return to_read(deployments.get_deployment(session, deployment_id=deployment_id))
