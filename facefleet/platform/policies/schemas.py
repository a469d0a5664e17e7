"""Retrain-policy bodies and views; a policy that could never fire or run is rejected here."""

from __future__ import annotations

import fnmatch
from datetime import datetime
from typing import Any, Literal

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from facefleet.platform.names import NAME_PATTERN
from facefleet.platform.runs.schemas import TrainingConfig

TriggerKind = Literal["dataset_added", "schedule", "metric_drop", "manual"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetSelector(_Strict):
    """Which training datasets a policy uses: by name, glob or tag (any match); empty = every one."""

    names: list[str] = Field(default_factory=list)
    glob: str | None = Field(None, min_length=1, max_length=128, description="e.g. 'faces-*'")
    tags: list[str] = Field(default_factory=list)

    def is_empty(self) -> bool:
        return not self.names and not self.glob and not self.tags

    def matches(self, name: str, tags: list[str] | None = None) -> bool:
        if self.is_empty():
            return True
        if name in self.names:
            return True
        if self.glob and fnmatch.fnmatchcase(name, self.glob):
            return True
        return bool(set(self.tags) & set(tags or []))


class NotifyTargets(_Strict):
    webhooks: list[str] = Field(default_factory=list, description="http(s) URLs that get a signed JSON POST")
    emails: list[str] = Field(default_factory=list)

    @field_validator("webhooks")
    @classmethod
    def _http_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"webhook {url!r} must be an http:// or https:// URL")
        return urls

    @field_validator("emails")
    @classmethod
    def _addresses(cls, emails: list[str]) -> list[str]:
        for address in emails:
            local, _, domain = address.partition("@")
            if not local or not domain or " " in address:
                raise ValueError(f"{address!r} is not an e-mail address like ops@example.com")
        return emails


class PolicyFields(_Strict):
    """Every setting of a policy; validated as a whole so updates cannot produce an impossible policy."""

    name: str = Field(min_length=1, max_length=128, pattern=NAME_PATTERN)
    enabled: bool = True
    triggers: list[TriggerKind] = Field(min_length=1, description="manual firing is always allowed")
    cron: str | None = Field(None, description="5-field cron expression (UTC), needed by 'schedule'")
    dataset_selector: DatasetSelector = Field(default_factory=lambda: DatasetSelector(glob=None))
    verification_sets: list[str] = Field(default_factory=list, description="verification dataset names")
    base_config: TrainingConfig = Field(default_factory=TrainingConfig)
    model_name: str = Field("facefleet", min_length=1, max_length=128, pattern=NAME_PATTERN)
    metric_name: str = Field("accuracy", min_length=1, max_length=64)
    metric_threshold: float | None = Field(None, ge=0.0, le=1.0)
    metric_check_interval_seconds: int = Field(3600, ge=1, le=7 * 86400)
    debounce_seconds: int = Field(300, ge=0, le=7 * 86400)
    auto_promote: bool = False
    notify: NotifyTargets = Field(default_factory=NotifyTargets)

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, cron: str | None) -> str | None:
        if cron is not None and not croniter.is_valid(cron):
            raise ValueError(
                f"{cron!r} is not a cron expression; use 5 fields like '0 3 * * *' (03:00 UTC daily)"
            )
        return cron

    @model_validator(mode="after")
    def _can_fire(self) -> PolicyFields:
        if "schedule" in self.triggers and not self.cron:
            raise ValueError("trigger 'schedule' needs a cron expression in 'cron', e.g. '0 3 * * *'")
        if "metric_drop" in self.triggers and (self.metric_threshold is None or not self.verification_sets):
            raise ValueError(
                "trigger 'metric_drop' needs 'metric_threshold' (0-1) and at least one name in "
                "'verification_sets' to monitor"
            )
        if self.auto_promote and not self.verification_sets:
            raise ValueError("auto_promote compares models on 'verification_sets'; name at least one")
        return self

    def stored_config(self) -> dict[str, Any]:
        """The base config as sent (defaults not frozen in), with the policy's model name."""
        config = self.base_config.model_dump(mode="json", exclude_unset=True, by_alias=True)
        config["model_name"] = self.model_name
        return config


class PolicyCreate(PolicyFields):
    pass


class PolicyUpdate(_Strict):
    """A partial update: only the fields sent change; the result must still be a valid policy."""

    name: str | None = Field(None, min_length=1, max_length=128, pattern=NAME_PATTERN)
    enabled: bool | None = None
    triggers: list[TriggerKind] | None = Field(None, min_length=1)
    cron: str | None = None
    dataset_selector: DatasetSelector | None = None
    verification_sets: list[str] | None = None
    base_config: dict[str, Any] | None = None
    model_name: str | None = Field(None, min_length=1, max_length=128, pattern=NAME_PATTERN)
    metric_name: str | None = None
    metric_threshold: float | None = None
    metric_check_interval_seconds: int | None = None
    debounce_seconds: int | None = None
    auto_promote: bool | None = None
    notify: NotifyTargets | None = None


class PolicyRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    enabled: bool
    triggers: list[str]
    cron: str | None
    dataset_selector: dict[str, Any]
    verification_sets: list[str]
    base_config: dict[str, Any]
    model_name: str
    metric_name: str
    metric_threshold: float | None
    metric_check_interval_seconds: int
    debounce_seconds: int
    auto_promote: bool
    notify: dict[str, Any]
    pending_trigger: str | None
    pending_since: datetime | None
    pending_events: list[dict[str, Any]]
    active_run_id: int | None
    last_fired_at: datetime | None
    next_cron_at: datetime | None
    last_metric_check_at: datetime | None
    created_at: datetime
