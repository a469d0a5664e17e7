"""The audit log: every state-changing request records who did what to which object, and when."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from facefleet.platform.db.models import AuditEvent
from facefleet.platform.db.paging import fetch_page


def record(
    session: Session,
    actor: str,
    action: str,
    target_type: str = "",
    target_id: str | int | None = "",
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add one audit event to the caller's transaction (it commits or rolls back with the change)."""
    event = AuditEvent(
        actor=actor[:128],
        action=action[:128],
        target_type=target_type[:64],
        target_id="" if target_id is None else str(target_id)[:128],
        details=details or {},
    )
    session.add(event)
    return event


def list_events(
    session: Session,
    *,
    limit: int,
    offset: int,
    actor: str | None = None,
    action: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    since: datetime | None = None,
    after: int | None = None,
) -> tuple[list[AuditEvent], int | None]:
    """A page of events, newest first, with the total count matching the filters."""
    stmt = select(AuditEvent)
    if actor:
        stmt = stmt.where(AuditEvent.actor == actor)
    if action:
        # "runs." matches every run action; a full name matches exactly.
        stmt = stmt.where(
            AuditEvent.action.startswith(action) if action.endswith(".") else AuditEvent.action == action
        )
    if target_type:
        stmt = stmt.where(AuditEvent.target_type == target_type)
    if target_id:
        stmt = stmt.where(AuditEvent.target_id == target_id)
    if since:
        stmt = stmt.where(AuditEvent.created_at >= since)
    return fetch_page(
        session,
        stmt.order_by(AuditEvent.id.desc()),
        limit=limit,
        offset=offset,
        after=after,
        key=AuditEvent.id,
        descending=True,
    )
