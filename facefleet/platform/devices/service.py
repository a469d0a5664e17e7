"""Device registry: register in a group, one-time enrollment tokens, hashed credentials, heartbeats."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import Connection, bindparam, select, update
from sqlalchemy.orm import Session

from facefleet.platform import audit
from facefleet.platform.auth.service import hash_token
from facefleet.platform.db.base import as_utc, utcnow
from facefleet.platform.db.models import Device
from facefleet.platform.db.paging import fetch_page
from facefleet.platform.db.views import PageQuery, RowView
from facefleet.platform.devices.schemas import DeviceCreate, DeviceRead, DeviceRegistered
from facefleet.platform.errors import (
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
)

ENROLLMENT_PREFIX = "ffe_"
CREDENTIAL_PREFIX = "ffd_"


def register_device(
    session: Session,
    *,
    name: str,
    group: str,
    adaptation_enabled: bool = False,
    token_ttl_seconds: int = 86400,
) -> tuple[Device, str, datetime]:
    """Create a device and return it with its one-time enrollment token (only its hash is stored)."""
    if session.scalar(select(Device.id).where(Device.name == name)) is not None:
        raise ConflictError(f"a device named {name!r} already exists; pick another name", field="name")
    device = Device(
        name=name, group=group, adaptation_enabled=adaptation_enabled, status="registered", health={}
    )
    session.add(device)
    token, expires_at = _issue_token(device, token_ttl_seconds)
    session.flush()
    return device, token, expires_at


def reissue_enrollment_token(
    session: Session, *, device_id: int, token_ttl_seconds: int = 86400
) -> tuple[Device, str, datetime]:
    """A fresh enrollment token (e.g. a terminal was re-imaged); the old credential stops working."""
    device = get_device(session, device_id=device_id)
    if device.status == "disabled":
        raise ConflictError(f"device {device.name!r} is disabled; it cannot enroll again")
    device.credential_hash = None
    device.status = "registered"
    token, expires_at = _issue_token(device, token_ttl_seconds)
    session.flush()
    return device, token, expires_at


def _issue_token(device: Device, ttl_seconds: int) -> tuple[str, datetime]:
    token = ENROLLMENT_PREFIX + secrets.token_urlsafe(32)
    expires_at = utcnow() + timedelta(seconds=ttl_seconds)
    device.enrollment_token_hash = hash_token(token)
    device.enrollment_expires_at = expires_at
    return token, expires_at


def enroll(session: Session, token: str) -> tuple[Device, str]:
    """Exchange a one-time enrollment token for the device's own credential (``ffd_...``)."""
    device = session.scalar(select(Device).where(Device.enrollment_token_hash == hash_token(token)))
    if device is None:
        raise AuthenticationError("enrollment token is unknown or already used; ask an admin for a new one")
    if device.status == "disabled":
        raise PermissionDeniedError(f"device {device.name!r} is disabled")
    expires_at = device.enrollment_expires_at
    if expires_at is None or as_utc(expires_at) <= utcnow():
        raise AuthenticationError("enrollment token has expired; ask an admin to re-issue one")
    credential = CREDENTIAL_PREFIX + secrets.token_urlsafe(32)
    device.credential_hash = hash_token(credential)
    device.enrollment_token_hash = None  # one-time: a second exchange finds nothing
    device.enrollment_expires_at = None
    device.status = "active"
    device.last_seen_at = utcnow()
    session.flush()
    return device, credential


def authenticate_device(session: Session, credential: str) -> Device:
    """The device owning ``credential``; 401 when unknown, 403 when disabled."""
    if not credential.startswith(CREDENTIAL_PREFIX):
        raise AuthenticationError("not a device credential; send 'Authorization: Bearer ffd_...'")
    device = session.scalar(select(Device).where(Device.credential_hash == hash_token(credential)))
    if device is None:
        raise AuthenticationError("unknown device credential; enroll the terminal again")
    if device.status == "disabled":
        raise PermissionDeniedError(f"device {device.name!r} is disabled")
    return device


def disable_device(session: Session, *, device_id: int) -> Device:
    device = get_device(session, device_id=device_id)
    device.status = "disabled"
    device.enrollment_token_hash = None
    session.flush()
    return device


def record_heartbeat(
    session: Session,
    device: Device,
    *,
    agent_version: str,
    model_version_id: int | None,
    health: dict[str, Any],
) -> Device:
    device.agent_version = agent_version
    device.model_version_id = model_version_id
    device.health = health
    device.last_seen_at = utcnow()
    session.flush()
    return device


def heartbeat_by_credential(
    session: Session,
    credential: str,
    *,
    agent_version: str,
    model_version_id: int | None,
    health: dict[str, Any],
) -> tuple[int, str, bool]:
    """Authenticate and record a heartbeat in one UPDATE ... RETURNING: one write, no read before it.

    Returns the device's (id, status, adaptation_enabled); 401/403 exactly as ``authenticate_device``.
    """
    if not credential.startswith(CREDENTIAL_PREFIX):
        raise AuthenticationError("not a device credential; send 'Authorization: Bearer ffd_...'")
    stmt = (
        update(Device)
        .where(Device.credential_hash == hash_token(credential), Device.status != "disabled")
        .values(
            agent_version=agent_version,
            model_version_id=model_version_id,
            health=health,
            last_seen_at=utcnow(),
        )
        .returning(Device.id, Device.status, Device.adaptation_enabled)
        .execution_options(synchronize_session=False)
    )
    row = session.execute(stmt).first()
    if row is None:  # unknown or disabled: say which
        authenticate_device(session, credential)
        raise AuthenticationError("unknown device credential; enroll the terminal again")
    return int(row[0]), str(row[1]), bool(row[2])


def get_device(session: Session, *, device_id: int) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise NotFoundError(f"no device with id {device_id}")
    return device


def list_devices(
    session: Session,
    *,
    group: str | None = None,
    limit: int = 100,
    offset: int = 0,
    after: int | None = None,
) -> tuple[list[Device], int | None]:
    query = select(Device)
    if group is not None:
        query = query.where(Device.group == group)
    return fetch_page(
        session, query.order_by(Device.id), limit=limit, offset=offset, after=after, key=Device.id
    )


# GET /v1/devices: Core rows straight into DeviceRead, one statement (the page and its bounded count).
_VIEW = RowView(DeviceRead, Device.__table__)  # type: ignore[arg-type]


@cache
def _page_query(by_group: bool) -> PageQuery:
    stmt = _VIEW.select()
    if by_group:
        stmt = stmt.where(Device.group == bindparam("group"))
    return PageQuery(stmt.order_by(Device.id), key=Device.id)


def list_device_views(
    conn: Connection,
    *,
    group: str | None = None,
    limit: int = 100,
    offset: int = 0,
    after: int | None = None,
) -> tuple[list[DeviceRead], int | None]:
    """``list_devices`` as views, in one statement."""
    params = {} if group is None else {"group": group}
    rows, total = _page_query(group is not None).fetch(conn, params, limit=limit, offset=offset, after=after)
    return _VIEW.models(_VIEW.dicts(rows)), total


def register_device_audited(session: Session, body: DeviceCreate, *, actor: str) -> DeviceRegistered:
    """Register a terminal from a validated request, record who did it, return its one-time token."""
    device, token, expires_at = register_device(
        session,
        name=body.name,
        group=body.group,
        adaptation_enabled=body.adaptation_enabled,
        token_ttl_seconds=body.token_ttl_seconds,
    )
    audit.record(
        session, actor, "devices.register", "device", device.id, {"name": device.name, "group": device.group}
    )
    return DeviceRegistered(
        device=DeviceRead.model_validate(device), enrollment_token=token, enrollment_expires_at=expires_at
    )


def disable_device_audited(session: Session, device_id: int, *, actor: str) -> DeviceRead:
    """Disable a terminal (its credential stops working) and record who did it."""
    device = disable_device(session, device_id=device_id)
    audit.record(session, actor, "devices.disable", "device", device.id, {"name": device.name})
    return DeviceRead.model_validate(device)


def reissue_enrollment_token_audited(session: Session, device_id: int, *, actor: str) -> DeviceRegistered:
    """A new one-time enrollment token for a terminal (the old credential stops), recorded."""
    device, token, expires_at = reissue_enrollment_token(session, device_id=device_id)
    audit.record(session, actor, "devices.reissue_token", "device", device.id, {"name": device.name})
    return DeviceRegistered(
        device=DeviceRead.model_validate(device), enrollment_token=token, enrollment_expires_at=expires_at
    )
