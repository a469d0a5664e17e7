"""/v1/deployments: roll a model version out to a device group (all or canary) and watch each device.

Admin only, reads included: deployments name devices and groups, which are the fleet's layout.
"""

from __future__ import annotations

from fastapi import APIRouter, Query, Response, status

from facefleet.api.deps import Admin, DbSession
from facefleet.api.errors import ERROR_RESPONSES
from facefleet.api.pagination import KeysetPagination, Page, make_page
from facefleet.api.params import PathId
from facefleet.api.responses import model_response
from facefleet.platform.deployments import service as deployments
from facefleet.platform.deployments.schemas import (
    DeploymentCreate,
    DeploymentPhase,
    DeploymentRead,
    DeviceRolloutRead,
    DeviceRolloutStatus,
)

router = APIRouter(prefix="/v1/deployments", tags=["deployments"], responses=ERROR_RESPONSES)


@router.post("", response_model=DeploymentRead, status_code=status.HTTP_201_CREATED)
def create_deployment(body: DeploymentCreate, session: DbSession, principal: Admin) -> DeploymentRead:
    return deployments.create_deployment_audited(session, body, actor=principal.actor)


@router.get("", response_model=Page[DeploymentRead])
def list_deployments(
    session: DbSession, _admin: Admin, page: KeysetPagination, group: str | None = Query(default=None)
) -> Response:
    summaries, total = deployments.list_deployments(
        session, group=group, limit=page.limit, offset=page.offset, after=page.after
    )
    page_out = make_page(summaries, total, page, deployments.summary_read, key=lambda v: v.deployment.id)
    return model_response(page_out)


@router.get("/{deployment_id}", response_model=DeploymentRead)
def get_deployment(
    deployment_id: PathId,
    session: DbSession,
    _admin: Admin,
    devices: bool = Query(default=True, description="false: counts only, `devices` null"),
) -> DeploymentRead:
    """The deployment with every device's row (page through a large group with ``/devices``)."""
    if not devices:
        return deployments.summary_read(
            deployments.get_deployment_summary(session, deployment_id=deployment_id)
        )
    return deployments.deployment_read(deployments.get_deployment(session, deployment_id=deployment_id))


@router.get("/{deployment_id}/devices", response_model=Page[DeviceRolloutRead])
def list_deployment_devices(
    deployment_id: PathId,
    session: DbSession,
    _admin: Admin,
    page: KeysetPagination,
    status: DeviceRolloutStatus | None = Query(default=None),
    phase: DeploymentPhase | None = Query(default=None),
) -> Response:
    """The deployment's device rows in device id order, a page at a time (``after``: a device id)."""
    rows, total = deployments.list_deployment_devices(
        session,
        deployment_id=deployment_id,
        status=status,
        phase=phase,
        limit=page.limit,
        offset=page.offset,
        after=page.after,
    )
    return model_response(make_page(rows, total, page, lambda row: row, key=lambda row: row.device_id))
