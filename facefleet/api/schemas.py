"""Bodies of the API's own resources (keys, audit, health, aliases). Unknown fields are rejected."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from facefleet.platform.db.base import DB_INT_MAX
from facefleet.platform.names import Name


class StrictBody(BaseModel):
    """Base of every request body: an unknown field is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class ApiKeyCreate(StrictBody):
    name: Name = Field(description="who or what uses the key, e.g. 'ci-bot'")
    role: Literal["admin", "viewer", "inspector"] = Field(
        description="admin: everything; viewer: read-only; inspector: list and label attempts only"
    )


class ApiKeyRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    prefix: str
    role: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyRead):
    key: str = Field(description="the secret; shown only now, store it safely")


class AuditEventRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    actor: str
    action: str
    target_type: str
    target_id: str
    details: dict[str, Any]
    created_at: datetime


class HealthStatus(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)


class AliasUpdate(StrictBody):
    version: int = Field(ge=1, le=DB_INT_MAX, description="the model version the alias should point at")
