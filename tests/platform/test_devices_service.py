"""Device registry: one-time enrollment tokens that expire, hashed credentials, disable."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session

from facefleet.platform.db.base import utcnow
from facefleet.platform.devices import service as devices
from facefleet.platform.errors import AuthenticationError, ConflictError, PermissionDeniedError


def test_enroll_exchanges_token_once_for_a_hashed_credential(session: Session) -> None:
    device, token, expires_at = devices.register_device(session, name="door-1", group="lobby")
    assert token.startswith("ffe_") and device.enrollment_token_hash != token
    assert expires_at > utcnow()
    enrolled, credential = devices.enroll(session, token)
    assert enrolled.id == device.id and enrolled.status == "active"
    assert credential.startswith("ffd_") and credential not in (device.credential_hash or "")
    assert devices.authenticate_device(session, credential).id == device.id
    with pytest.raises(AuthenticationError, match="already used"):
        devices.enroll(session, token)


def test_expired_token_is_refused(session: Session) -> None:
    device, token, _ = devices.register_device(session, name="door-2", group="lobby")
    device.enrollment_expires_at = utcnow() - timedelta(seconds=1)
    session.flush()
    with pytest.raises(AuthenticationError, match="expired"):
        devices.enroll(session, token)


def test_disabled_device_gets_403_and_unknown_credential_401(session: Session) -> None:
    device, token, _ = devices.register_device(session, name="door-3", group="lobby")
    _, credential = devices.enroll(session, token)
    devices.disable_device(session, device_id=device.id)
    with pytest.raises(PermissionDeniedError):
        devices.authenticate_device(session, credential)
    with pytest.raises(AuthenticationError):
        devices.authenticate_device(session, "ffd_not-a-real-one")
    with pytest.raises(ConflictError):
        devices.register_device(session, name="door-3", group="other")


def test_reissued_token_revokes_the_old_credential(session: Session) -> None:
    device, token, _ = devices.register_device(session, name="door-4", group="lobby")
    _, old_credential = devices.enroll(session, token)
    _, new_token, _ = devices.reissue_enrollment_token(session, device_id=device.id)
    with pytest.raises(AuthenticationError):
        devices.authenticate_device(session, old_credential)
    _, new_credential = devices.enroll(session, new_token)
    assert devices.authenticate_device(session, new_credential).id == device.id
