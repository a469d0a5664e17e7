"""Tell administrators about rollout outcomes (a stopped rollout above all)."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from facefleet.platform.db.models import Notification

log = logging.getLogger(__name__)


def notify_admins(session: Session, *, event: str, payload: dict[str, Any]) -> None:
    """Queue a notification row; the notifications worker delivers pending rows to the configured channels."""
    log.warning("%s: %s", event, payload) if event == "deployment.stopped" else log.info(
        "%s: %s", event, payload
    )
    session.add(
        Notification(event=event, channel="admins", target="admins", payload=payload, status="pending")
    )
    session.flush()
