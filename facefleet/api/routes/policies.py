"""/v1/policies: retrain policies CRUD, and fire now (the scheduler starts the run at its next tick)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from facefleet.api.action_routes import add_action_route
from facefleet.api.deps import Admin, DbSession, Viewer, in_transaction, read_only
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


# The reads and the fire action are async routes with one worker-thread hop each (read_only, in_transaction)
# around the service call; the other writes are sync routes with the request's DbSession.
@router.get("", response_model=Page[PolicyRead])
async def list_policies(
    request: Request, _principal: Viewer, page: KeysetPagination, enabled: bool | None = None
) -> Response:
    rows, total = await read_only(
        request,
        service.list_policy_views,
        limit=page.limit,
        offset=page.offset,
        enabled=enabled,
        after=page.after,
    )
    return model_response(make_page(rows, total, page, lambda view: view, key=lambda p: p.id))


@router.get("/{policy_id}", response_model=PolicyRead)
async def get_policy(policy_id: PathId, request: Request, _principal: Viewer) -> Response:
    return model_response(await read_only(request, service.get_policy_view, policy_id=policy_id))


@router.patch("/{policy_id}", response_model=PolicyRead)
def update_policy(policy_id: PathId, body: PolicyUpdate, session: DbSession, principal: Admin) -> PolicyRead:
    return service.update_policy_audited(session, policy_id, body, actor=principal.actor)


@router.delete("/{policy_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def delete_policy(policy_id: PathId, session: DbSession, principal: Admin) -> Response:
    service.delete_policy_audited(session, policy_id, actor=principal.actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


async def _fire(policy_id: PathId, request: Request, principal: Admin) -> Response:
    policy = await in_transaction(request, service.fire_policy_audited, policy_id, actor=principal.actor)
    return model_response(policy, status_code=status.HTTP_202_ACCEPTED)


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
