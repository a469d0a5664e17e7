"""Pydantic shapes of deployments (admin side) and assignments (device side)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from facefleet.platform.db.base import DB_INT_MAX
from facefleet.platform.inspections.schemas import AssignedCollection
from facefleet.platform.names import Name

DeviceRolloutStatus = Literal["pending", "downloading", "installed", "failed", "rolled_back", "superseded"]
DeploymentPhase = Literal["canary", "rest", "all"]
ReportableStatus = Literal["downloading", "installed", "failed", "rolled_back"]


class DeploymentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_version_id: int = Field(ge=1, le=DB_INT_MAX)
    group: Name
    strategy: Literal["all", "canary"] = "all"
    canary_percent: float = Field(
        default=0.0, ge=0.0, le=100.0, description="Share of the group updated first."
    )
    max_failure_rate: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Stop and roll back when failed/updated devices exceeds this.",
    )
    release_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description=(
            "Pace the rollout: release at most this many devices of each phase per minute, in device order "
            "(canaries from the start, the rest once the canaries finished); null releases all at once."
        ),
    )

    @model_validator(mode="after")
    def _canary_needs_percent(self) -> DeploymentCreate:
        if self.strategy == "canary" and not 0 < self.canary_percent < 100:
            raise ValueError("strategy 'canary' needs canary_percent between 0 and 100 (exclusive), e.g. 20")
        return self


class DeviceRolloutRead(BaseModel):
    device_id: int
    device_name: str
    phase: str
    status: str
    released: bool = Field(description="Whether its turn has come (stage and pacing); false: it waits.")
    previous_model_version_id: int | None
    message: str
    updated_at: datetime


class DeploymentRead(BaseModel):
    id: int
    model_version_id: int
    group: str
    strategy: str
    canary_percent: float
    max_failure_rate: float
    release_per_minute: int | None = None
    rest_released_at: datetime | None = Field(
        default=None, description="When the canaries finished and the rest of the group was released."
    )
    status: str
    stage: str = Field(description="canary | rollout | done")
    created_by: str
    created_at: datetime
    finished_at: datetime | None
    device_count: int = Field(default=0, description="Devices in the deployment.")
    device_counts: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="Devices per phase (canary | rest | all), then per status."
    )
    devices: list[DeviceRolloutRead] | None = Field(
        default=None,
        description="Each device's row, only in GET /v1/deployments/{id} (lists and the create answer: null; "
        "page through a large group with GET /v1/deployments/{id}/devices).",
    )


class AssignedArtifact(BaseModel):
    file: str
    sha256: str
    size: int
    url: str = Field(description="Relative to the API root; send the device credential.")


class AssignedModel(BaseModel):
    model_version_id: int
    name: str
    version: int
    card_b64: str = Field(description="The exact signed bytes of model_card.json, base64.")
    signature: str = Field(description="Base64 Ed25519 signature of the card bytes.")
    artifacts: list[AssignedArtifact]


class AssignmentRead(BaseModel):
    """What this device should run. ``install``: get ``model``; ``rollback``: return to ``model``."""

    deployment_id: int | None
    action: Literal["install", "rollback", "none"]
    status: str | None = Field(default=None, description="This device's status in the deployment.")
    model: AssignedModel | None = None
    collection: AssignedCollection = Field(
        default_factory=AssignedCollection, description="Which verification attempts to upload."
    )


class StatusReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    deployment_id: int = Field(ge=1, le=DB_INT_MAX)
    status: ReportableStatus
    message: str = Field(default="", max_length=2000)
