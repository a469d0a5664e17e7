"""Notifications: rows in `notifications`, delivered by signed webhook POST or e-mail, retried with backoff.

Delivery is separate from enqueueing so that a notification is committed with the change that caused it
and survives a crash; `deliver_due` (called by the scheduler loop) sends what is due and reschedules failures.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import smtplib
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from typing import Any

import httpx
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from facefleet.platform.db.models import Notification
from facefleet.platform.settings import Settings, get_settings

log = logging.getLogger("facefleet.notifications")

SIGNATURE_HEADER = "X-Facefleet-Signature"
EVENTS = ("run.succeeded", "run.failed", "run.cancelled", "model.promoted", "deployment.finished")
MAX_ATTEMPTS = 5
BACKOFF_BASE_SECONDS = 5.0
BACKOFF_MAX_SECONDS = 3600.0


def sign_payload(body: bytes, secret: str) -> str:
    """``sha256=<hex HMAC-SHA256 of the raw body>``; receivers recompute it with the shared secret."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, secret: str, header: str) -> bool:
    return hmac.compare_digest(sign_payload(body, secret), header)


def backoff_seconds(attempts: int) -> float:
    """Exponential backoff after the n-th failed attempt: 5 s, 10 s, 20 s, ... capped at an hour."""
    return float(min(BACKOFF_BASE_SECONDS * 2 ** max(attempts - 1, 0), BACKOFF_MAX_SECONDS))


def enqueue(
    session: Session,
    *,
    event: str,
    payload: dict[str, Any],
    webhooks: Iterable[str] = (),
    emails: Iterable[str] = (),
    settings: Settings | None = None,
    now: datetime | None = None,
) -> list[Notification]:
    """One pending row per target (the given ones plus the globally configured ones)."""
    settings = settings or get_settings()
    now = now or datetime.now(timezone.utc)
    body = {"event": event, "sent_at": now.isoformat(), **payload}
    rows: list[Notification] = []
    for channel, targets in (
        ("webhook", [*webhooks, *settings.notify_webhooks]),
        ("email", [*emails, *settings.notify_emails]),
    ):
        for target in dict.fromkeys(targets):  # de-duplicate, keep order
            row = Notification(
                event=event,
                channel=channel,
                target=target,
                payload=body,
                status="pending",
                attempts=0,
                next_attempt_at=now,
            )
            session.add(row)
            rows.append(row)
    session.flush()
    return rows


def send_webhook(url: str, payload: dict[str, Any], *, secret: str | None, timeout: float = 10.0) -> None:
    body = json.dumps(payload, sort_keys=True, default=str).encode("utf-8")
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "facefleet-notifier",
        "X-Facefleet-Event": str(payload.get("event", "")),
    }
    if secret:
        headers[SIGNATURE_HEADER] = sign_payload(body, secret)
    response = httpx.post(url, content=body, headers=headers, timeout=timeout)
    if response.status_code >= 300:
        raise RuntimeError(f"webhook answered HTTP {response.status_code}")


def render_email(payload: dict[str, Any]) -> tuple[str, str]:
    """Subject and plain-text body; the best dataset combination is spelled out when present."""
    event = str(payload.get("event", "event"))
    subject = f"[facefleet] {event}: {payload.get('summary', '')}".strip()
    lines = [str(payload.get("summary", event)), ""]
    best = payload.get("best_combination")
    if best:
        lines.append(f"Best dataset combination so far for policy {payload.get('policy', '')}:")
        lines.append(
            f"  {' + '.join(best.get('datasets', []))} -> accuracy {best.get('accuracy')}"
            f" (run {best.get('run_id')})"
        )
        lines.append("")
    lines.append(json.dumps(payload, indent=2, sort_keys=True, default=str))
    return subject[:200], "\n".join(lines)


def send_email(address: str, payload: dict[str, Any], *, settings: Settings, timeout: float = 10.0) -> None:
    if not settings.smtp_host:
        raise RuntimeError("no SMTP server configured; set FACEFLEET_SMTP_HOST")
    subject, text = render_email(payload)
    message = EmailMessage()
    message["From"] = settings.smtp_from
    message["To"] = address
    message["Subject"] = subject
    message.set_content(text)
    with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=timeout) as smtp:
        smtp.send_message(message)


def _deliver_one(row: Notification, settings: Settings) -> None:
    if row.channel == "webhook":
        secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
        send_webhook(row.target, row.payload, secret=secret)
    elif row.channel == "email":
        send_email(row.target, row.payload, settings=settings)
    else:
        raise RuntimeError(f"unknown notification channel {row.channel!r}")


def deliver_due(
    session: Session, *, now: datetime | None = None, settings: Settings | None = None, limit: int = 50
) -> int:
    """Send the pending notifications that are due; return how many were sent. Never raises for a target.

    Rows are claimed with SKIP LOCKED on PostgreSQL so two schedulers do not send the same message twice.
    """
    settings = settings or get_settings()
    now = now or datetime.now(timezone.utc)
    stmt = (
        select(Notification)
        .where(
            Notification.status == "pending",
            or_(Notification.next_attempt_at.is_(None), Notification.next_attempt_at <= now),
        )
        .order_by(Notification.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    sent = 0
    for row in session.scalars(stmt).all():
        row.attempts += 1
        try:
            _deliver_one(row, settings)
        except Exception as exc:  # noqa: BLE001 - any failure of a target is retried, not fatal
            row.last_error = f"{type(exc).__name__}: {exc}"[:2000]
            if row.attempts >= MAX_ATTEMPTS:
                row.status = "failed"
                log.warning("notification %s to %s failed for good: %s", row.id, row.target, row.last_error)
            else:
                row.next_attempt_at = now + timedelta(seconds=backoff_seconds(row.attempts))
            continue
        row.status, row.sent_at, row.last_error = "sent", now, None
        sent += 1
    return sent
