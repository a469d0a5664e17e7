"""What a training worker is given: the run's config, label space, step count and where its data lives."""

from __future__ import annotations

from pydantic import BaseModel

from facefleet.platform.runs.schemas import TrainingConfig
from facefleet.workers.label_space import LabelSpaceEntry


class TrainJob(BaseModel):
    """Everything a worker needs, passed as the Ray Train loop config (pickled by Ray)."""

    run_id: int
    config: TrainingConfig
    entries: list[LabelSpaceEntry]  # one per training dataset, with its class offset
    total_steps: int
    database_url: str
    store_url: str
    s3_endpoint_url: str | None = None
    cache_dir: str
