"""Pydantic shapes of collection settings, uploaded attempts, verdicts and inspection sets."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from facefleet.platform.db.base import DB_INT_MAX
from facefleet.platform.names import Name

AttemptSelection = Literal["rejections", "near_threshold", "all"]
Verdict = Literal["genuine", "impostor", "unusable"]
AttemptStatus = Literal["pending", "labelled"]
# Cosine scores; a little slack for float rounding, and -1 is what a terminal reports when it found no face.
SCORE_SLACK = 1e-3
RowId = Annotated[int, Field(ge=1, le=DB_INT_MAX)]


def _in_utc(moment: datetime) -> datetime:
    """A time the database can hold: converted to UTC (naive: taken as UTC), years 1-9999 after that."""
    try:
        return moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    except OverflowError:
        raise ValueError("must be a time between the years 1 and 9999 in UTC") from None


UtcTime = Annotated[datetime, AfterValidator(_in_utc)]
# A user name as the terminal knows it: any text but control characters.
UserName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]


class CollectionSettings(BaseModel):
    """What a group's terminals upload. Off unless an admin turns it on."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="false: terminals upload nothing")
    sample_rate: float = Field(
        default=1.0, ge=0.0, le=1.0, allow_inf_nan=False, description="Share of selected attempts uploaded."
    )
    attempts: AttemptSelection = Field(
        default="rejections",
        description="rejections: only refused attempts; near_threshold: |score - threshold| <= band; all",
    )
    near_threshold_band: float = Field(
        default=0.05, ge=0.0, le=2.0, allow_inf_nan=False, description="Half-width of the near band."
    )
    retention_days: int = Field(
        default=30, ge=1, le=3650, description="Attempts are deleted this many days after upload."
    )


class CollectionRead(CollectionSettings):
    group: str
    updated_by: str
    updated_at: datetime | None


class AssignedCollection(BaseModel):
    """The part of a terminal's assignment that says what to upload (``enabled`` false: nothing)."""

    enabled: bool = False
    sample_rate: float = 0.0
    attempts: AttemptSelection = "rejections"
    near_threshold_band: float = 0.0


class AttemptUpload(BaseModel):
    """One verification attempt as a terminal reports it (``POST /v1/device/attempts``)."""

    model_config = ConfigDict(extra="forbid")

    model_version_id: int = Field(ge=1, le=DB_INT_MAX, description="The model that scored the attempt.")
    user: UserName = Field(description="The claimed (enrolled) user.")
    score: float = Field(ge=-1.0 - SCORE_SLACK, le=1.0 + SCORE_SLACK, allow_inf_nan=False)
    decision: Literal["accept", "reject"]
    threshold: float = Field(ge=-1.0, le=1.0, allow_inf_nan=False, description="The card's threshold.")
    captured_at: UtcTime
    probe_png_b64: str = Field(min_length=1, description="The aligned face crop of the attempt (PNG/JPEG).")
    reference_png_b64: str = Field(
        min_length=1, description="The claimed user's enrolled reference crop (PNG/JPEG)."
    )


class AttemptRead(BaseModel):
    id: int
    device_id: int
    group: str
    model_version_id: int | None
    user: str
    score: float
    decision: str
    threshold: float
    captured_at: datetime
    status: str
    verdict: str | None
    labelled_by: str | None
    labelled_at: datetime | None
    expires_at: datetime
    created_at: datetime
    probe_url: str = Field(description="GET it with the same key (PNG).")
    reference_url: str


class AttemptReceipt(BaseModel):
    id: int
    expires_at: datetime


class VerdictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    verdict: Verdict


class ErasureResult(BaseModel):
    device_id: int
    deleted: int = Field(description="attempts deleted (rows and crops)")
    inspection_sets_deleted: list[str] = Field(
        default_factory=list, description="inspection set versions (name:version) with its crops, deleted"
    )
    inspection_sets_kept: list[str] = Field(
        default_factory=list,
        description="inspection set versions with its crops that a run used: kept; delete the run's model, "
        "run and dataset to remove them",
    )


class InspectionSetCreate(BaseModel):
    """Labelled attempts -> a dataset version of kind ``inspection`` (``unusable`` ones are left out)."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    attempt_ids: list[RowId] | None = Field(
        default=None, max_length=100_000, description="Exactly these attempts; else the filters below."
    )
    device_ids: list[RowId] | None = Field(default=None, max_length=10_000)
    group: str | None = Field(default=None, max_length=128)
    model_version_ids: list[RowId] | None = Field(default=None, max_length=1000)
    since: UtcTime | None = None
    until: UtcTime | None = None
