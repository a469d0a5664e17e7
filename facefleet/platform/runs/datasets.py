"""A run's datasets: their class ranges (design §5.1) and the one run -> dataset version -> dataset join."""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from facefleet.platform.db.base import DB_INT_MAX
from facefleet.platform.db.models import Dataset, DatasetVersion, RunDataset
from facefleet.platform.errors import InvalidInputError, NotFoundError


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


def _small_number(text: str) -> int | None:
    """``text`` as an id or version number when it is ASCII digits that fit a database integer."""
    if not re.fullmatch(r"[0-9]{1,10}", text) or int(text) > DB_INT_MAX:
        return None
    return int(text)


def resolve_dataset_version(session: Session, ref: str | int) -> DatasetVersion:
    """A dataset version from an id (int or digits), ``name`` (latest ready) or ``name:version``."""
    text = str(ref).strip()
    if re.fullmatch(r"[0-9]+", text):
        # Too many digits for an id: no such version (a lookup would overflow the database integer).
        number = _small_number(text)
        found = session.get(DatasetVersion, number) if number is not None else None
        if found is None:
            raise NotFoundError(f"no dataset version with id {text}", field="datasets")
        return found
    name, _, version = text.partition(":")
    query = select(DatasetVersion).join(Dataset).where(Dataset.name == name)
    if version:
        if not re.fullmatch(r"[0-9]+", version):
            raise InvalidInputError(f"dataset reference {text!r}: version must be a number", field="datasets")
        query = query.where(DatasetVersion.version == (_small_number(version) or 0))
    else:
        query = query.where(DatasetVersion.status == "ready")
    found = session.scalars(query.order_by(DatasetVersion.version.desc()).limit(1)).first()
    if found is None:
        raise NotFoundError(
            f"no ready dataset version for {text!r}; register the dataset first", field="datasets"
        )
    return found
