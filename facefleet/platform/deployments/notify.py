"""Tell administrators about rollout outcomes (a stopped rollout above all)."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from facefleet.platform import audit, notifications

log = logging.getLogger(__name__)


def notify_admins(session: Session, *, event: str, payload: dict[str, Any]) -> None:
    """Queue one notification per configured admin channel (webhooks, e-mails) and keep an audit record.

    Both join the caller's transaction, so they exist exactly when the rollout change they report does.
    """
    level = logging.WARNING if event == "deployment.stopped" else logging.INFO
    log.log(level, "%s: %s", event, payload)
    audit.record(session, "system", event, "deployment", payload.get("deployment_id"), payload)
    notifications.enqueue(session, event=event, payload=payload)
