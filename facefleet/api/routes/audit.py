"""/v1/audit: the audit log, newest first, filterable by actor, action, target and time."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Response

from facefleet.api.deps import DbSession, Viewer
from facefleet.api.errors import ERROR_RESPONSES
from facefleet.api.pagination import KeysetPagination, Page, make_page
from facefleet.api.responses import model_response
from facefleet.api.schemas import AuditEventRead
from facefleet.platform import audit

router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=ERROR_RESPONSES)


@router.get("", response_model=Page[AuditEventRead])
def list_audit_events(
    session: DbSession,
    _principal: Viewer,
    page: KeysetPagination,
    actor: str | None = None,
    action: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    since: datetime | None = None,
) -> Response:
    """Filter ``action`` exactly (``runs.create``) or by prefix ending in a dot (``runs.``)."""
    rows, total = audit.list_events(
        session,
        limit=page.limit,
        offset=page.offset,
        actor=actor,
        action=action,
        target_type=target_type,
        target_id=target_id,
        since=since,
        after=page.after,
    )
    return model_response(make_page(rows, total, page, AuditEventRead.model_validate, key=lambda e: e.id))
