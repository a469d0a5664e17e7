"""Pydantic shapes of the device registry at the API boundary."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from facefleet.platform.db.base import DB_INT_MAX
from facefleet.platform.names import Name


class DeviceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    group: Name
    adaptation_enabled: bool = Field(default=False, description="Opt in to on-device adaptation (seed 000).")
    token_ttl_seconds: int = Field(
        default=86400, ge=60, le=30 * 86400, description="Enrollment token lifetime."
    )


class DeviceRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    group: str
    status: str
    adaptation_enabled: bool
    agent_version: str | None
    model_version_id: int | None
    health: dict[str, Any]
    last_seen_at: datetime | None
    created_at: datetime


class DeviceRegistered(BaseModel):
    """Returned once at registration: the token is never shown again."""

    device: DeviceRead
    enrollment_token: str
    enrollment_expires_at: datetime


class EnrollRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=8, max_length=256)


class EnrollResponse(BaseModel):
    device_id: int
    name: str
    group: str
    credential: str = Field(description="Bearer credential for /v1/device/...; shown once.")
    public_key_pem: str = Field(description="The platform's Ed25519 key; the terminal pins it.")
    adaptation_enabled: bool


class HeartbeatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_version: str = Field(max_length=64)
    model_version_id: int | None = Field(None, ge=1, le=DB_INT_MAX)
    health: dict[str, Any] = Field(default_factory=dict)


class HeartbeatResponse(BaseModel):
    device_id: int
    status: str
    adaptation_enabled: bool
