"""/v1/policies: retrain policies CRUD, and fire now (the scheduler starts the run at its next tick)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from facefleet.api.action_routes import add_action_route
from facefleet.api.deps import Admin, DbSession, Viewer
from facefleet.api.errors import ERROR_RESPONSES
from facefleet.api.pagination import KeysetPagination, Page, make_page
from facefleet.api.params import PathId
from facefleet.api.responses import model_response
from facefleet.platform.policies import service
from facefleet.platform.policies.schemas import PolicyCreate, PolicyRead, PolicyUpdate

router = APIRouter(prefix="/v1/policies", tags=["policies"], responses=ERROR_RESPONSES)


@router.post("", response_model=PolicyRead, status_code=status.HTTP_201_CREATED)
def create_policy(body: PolicyCreate, session: DbSession, principal: Admin) -> PolicyRead:
    return service.create_policy_audited(session, body, actor=principal.actor)


@router.get("", response_model=Page[PolicyRead])
def list_policies(
    session: DbSession, _principal: Viewer, page: KeysetPagination, enabled: bool | None = None
) -> Response:
    rows, total = service.list_policies(
        session, limit=page.limit, offset=page.offset, enabled=enabled, after=page.after
    )
    return model_response(make_page(rows, total, page, PolicyRead.model_validate, key=lambda p: p.id))


@router.get("/{policy_id}", response_model=PolicyRead)
def get_policy(policy_id: PathId, session: DbSession, _principal: Viewer) -> Response:
    return model_response(PolicyRead.model_validate(service.get_policy(session, policy_id=policy_id)))


@router.patch("/{policy_id}", response_model=PolicyRead)
def update_policy(policy_id: PathId, body: PolicyUpdate, session: DbSession, principal: Admin) -> PolicyRead:
    return service.update_policy_audited(session, policy_id, body, actor=principal.actor)


@router.delete("/{policy_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def delete_policy(policy_id: PathId, session: DbSession, principal: Admin) -> Response:
    service.delete_policy_audited(session, policy_id, actor=principal.actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _fire(policy_id: PathId, session: DbSession, principal: Admin) -> PolicyRead:
    return service.fire_policy_audited(session, policy_id, actor=principal.actor)


add_action_route(
    router,
    "/{policy_id}",
    "fire",
    _fire,
    name="fire_policy",
    response_model=PolicyRead,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Fire a policy now (merged with pending triggers; the scheduler starts the run)",
)
