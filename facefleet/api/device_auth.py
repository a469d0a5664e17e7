"""The device-credential dependency for /v1/device routes (API keys are refused there, and vice versa)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from facefleet.api.deps import DbSession, bearer_token
from facefleet.platform.db.models import Device
from facefleet.platform.devices.service import CREDENTIAL_PREFIX, authenticate_device
from facefleet.platform.errors import AuthenticationError, PermissionDeniedError


def device_credential(request: Request) -> str:
    """The device credential sent (not checked against the database): 401 without one, 403 for API keys."""
    token = bearer_token(request)
    if not token:
        raise AuthenticationError(
            "no device credential: send 'Authorization: Bearer ffd_...' from enrollment",
            field="Authorization",
        )
    if not token.startswith(CREDENTIAL_PREFIX):
        raise PermissionDeniedError(
            "/v1/device routes accept only device credentials (ffd_...), not API keys", field="Authorization"
        )
    return token


async def device_token(request: Request) -> str:
    """``device_credential`` as a dependency (async: no worker-thread hop)."""
    return device_credential(request)


def require_device(token: Annotated[str, Depends(device_token)], session: DbSession) -> Device:
    """The calling terminal: 401 without a known credential, 403 when disabled or when an API key is sent."""
    return authenticate_device(session, token)


DeviceToken = Annotated[str, Depends(device_token)]
CurrentDevice = Annotated[Device, Depends(require_device)]
