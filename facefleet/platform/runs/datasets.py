"""A run's datasets: their class ranges (design §5.1) and the one run -> dataset version -> dataset join."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from facefleet.platform.db.models import Dataset, DatasetVersion, RunDataset


def class_offsets(class_counts: Sequence[int]) -> list[int]:
    """Training datasets take consecutive class ranges in order: dataset i owns
    [offset_i, offset_i + count_i). The only place offsets are computed (the run rows and the workers'
    label space both come from here)."""
    offsets, offset = [], 0
    for count in class_counts:
        offsets.append(offset)
        offset += count
    return offsets


def run_datasets(
    session: Session, run_ids: Sequence[int], *, role: str | None = None
) -> list[tuple[RunDataset, DatasetVersion, Dataset]]:
    """Each run's dataset rows with their version and dataset, by run then position (one query)."""
    query = (
        select(RunDataset, DatasetVersion, Dataset)
        .join(DatasetVersion, RunDataset.dataset_version_id == DatasetVersion.id)
        .join(Dataset, DatasetVersion.dataset_id == Dataset.id)
        .where(RunDataset.run_id.in_(list(run_ids)))
        .order_by(RunDataset.run_id, RunDataset.position)
    )
    if role is not None:
        query = query.where(RunDataset.role == role)
    return [(row, version, dataset) for row, version, dataset in session.execute(query).all()]
