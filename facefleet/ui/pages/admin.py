"""Console pages for retrain policies (enable, disable, fire) and the audit log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import HTMLResponse, Response

from facefleet.api.deps import DbSession
from facefleet.api.routes import policies as policies_api
from facefleet.platform import audit
from facefleet.platform.errors import FacefleetError
from facefleet.platform.policies import service as policies
from facefleet.platform.policies.schemas import PolicyRead, PolicyUpdate
from facefleet.ui.web import ConsoleUser, ConsoleWriter, back

router = APIRouter(prefix="/ui", include_in_schema=False)
PolicyId = Annotated[int, Path(ge=1, le=2_000_000_000)]
AUDIT_PAGE = 100


@router.get("/policies", response_class=HTMLResponse)
def policies_page(console: ConsoleUser, session: DbSession) -> HTMLResponse:
    rows, total = policies.list_policies(session, limit=500, offset=0)
    return console.render(
        "policies.html",
        title="Retrain policies",
        nav="policies",
        policies=[PolicyRead.model_validate(row) for row in rows],
        total=total,
    )


def _set_enabled(policy_id: int, enabled: bool, console: ConsoleWriter, session: DbSession) -> Response:
    try:
        policies_api.update_policy(
            policy_id, PolicyUpdate.model_validate({"enabled": enabled}), session, console.principal
        )
    except FacefleetError as exc:
        session.rollback()
        return back("/ui/policies", error=exc.message)
    return back("/ui/policies", notice=f"policy {policy_id} {'enabled' if enabled else 'disabled'}")


@router.post("/policies/{policy_id}/enable")
def enable_policy(policy_id: PolicyId, console: ConsoleWriter, session: DbSession) -> Response:
    return _set_enabled(policy_id, True, console, session)


@router.post("/policies/{policy_id}/disable")
def disable_policy(policy_id: PolicyId, console: ConsoleWriter, session: DbSession) -> Response:
    return _set_enabled(policy_id, False, console, session)


@router.post("/policies/{policy_id}/fire")
def fire_policy(policy_id: PolicyId, console: ConsoleWriter, session: DbSession) -> Response:
    try:
        policies.fire_policy_audited(session, policy_id, actor=console.principal.actor)
    except FacefleetError as exc:
        session.rollback()
        return back("/ui/policies", error=exc.message)
    return back("/ui/policies", notice=f"policy {policy_id} fired; the scheduler starts its run soon")


@router.get("/audit", response_class=HTMLResponse)
def audit_page(
    console: ConsoleUser,
    session: DbSession,
    action: Annotated[str | None, Query(max_length=128)] = None,
    offset: Annotated[int, Query(ge=0, le=2_000_000_000)] = 0,
) -> HTMLResponse:
    events, total = audit.list_events(session, limit=AUDIT_PAGE, offset=offset, action=action or None)
    return console.render(
        "audit.html",
        title="Audit log",
        nav="audit",
        events=events,
        total=total,
        action=action or "",
        offset=offset,
        page=AUDIT_PAGE,
    )
