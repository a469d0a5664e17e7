"""Views of registered models as the API and CLI show them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ModelVersionView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    version: int
    run_id: int | None
    artifacts: dict[str, Any]
    card_sha256: str
    signature: str | None
    eval_summary: dict[str, Any]
    created_at: datetime
    aliases: list[str] = Field(default_factory=list)


class ModelSummary(BaseModel):
    name: str
    latest_version: int
    versions: int
    aliases: dict[str, int] = Field(default_factory=dict)
