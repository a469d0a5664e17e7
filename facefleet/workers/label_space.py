"""The multi-dataset label space of a run (design.md §5.1) and the sample index built from it.

Split from data.py so that the sampler can use the index without importing the loaders (which use it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from facefleet.platform.datasets.shards import read_manifest
from facefleet.platform.errors import InvalidInputError, NotFoundError
from facefleet.platform.runs.datasets import class_offsets
from facefleet.platform.runs.lifecycle import PlannedDataset
from facefleet.platform.store import ObjectStore


class LabelSpaceEntry(BaseModel):
    """One dataset version of a run and the global class range [class_offset, class_offset + num_classes)."""

    dataset_version_id: int
    dataset_name: str
    version: int
    manifest_key: str
    class_offset: int = 0
    num_classes: int
    image_count: int


def build_label_space(entries_in_order: Sequence[LabelSpaceEntry]) -> list[LabelSpaceEntry]:
    """Assign consecutive class offsets in the given order (pure: returns new entries)."""
    seen: set[int] = set()
    for entry in entries_in_order:
        if entry.dataset_version_id in seen:
            raise InvalidInputError(f"dataset version {entry.dataset_version_id} is listed twice")
        if entry.num_classes < 1:
            raise InvalidInputError(f"{entry.dataset_name}@{entry.version} has no identities")
        seen.add(entry.dataset_version_id)
    offsets = class_offsets([entry.num_classes for entry in entries_in_order])
    return [
        entry.model_copy(update={"class_offset": offset})
        for entry, offset in zip(entries_in_order, offsets, strict=True)
    ]


def plan_label_space(train: Sequence[PlannedDataset]) -> list[LabelSpaceEntry]:
    """The label space of a run as its rows store it (offsets computed once, when the run was created)."""
    return [
        LabelSpaceEntry(
            dataset_version_id=entry.dataset_version_id,
            dataset_name=entry.dataset,
            version=entry.version,
            manifest_key=entry.manifest_key,
            class_offset=entry.class_offset,
            num_classes=entry.num_classes,
            image_count=entry.image_count,
        )
        for entry in train
    ]


def label_space_for_versions(session: Session, dataset_version_ids: Sequence[int]) -> list[LabelSpaceEntry]:
    """Load the versions (all must be 'ready') and build their label space in the given order."""
    from facefleet.platform.db.models import Dataset, DatasetVersion

    rows = session.execute(
        select(DatasetVersion, Dataset.name)
        .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
        .where(DatasetVersion.id.in_(list(dataset_version_ids)))
    ).all()
    by_id = {version.id: (version, name) for version, name in rows}
    entries = []
    for version_id in dataset_version_ids:
        if version_id not in by_id:
            raise NotFoundError(f"dataset version {version_id} does not exist")
        version, name = by_id[version_id]
        label = f"{name}@{version.version}"
        if version.status != "ready" or not version.manifest_key:
            raise InvalidInputError(
                f"dataset version {label} is '{version.status}', not 'ready'; wait for it or pick another",
                field="dataset_version_ids",
            )
        entries.append(
            LabelSpaceEntry(
                dataset_version_id=version.id,
                dataset_name=name,
                version=version.version,
                manifest_key=version.manifest_key,
                num_classes=version.identity_count,
                image_count=version.image_count,
            )
        )
    return build_label_space(entries)


class SampleIndex:
    """All samples of a run as numpy columns, grouped by shard: shard, byte range, label, dataset."""

    def __init__(self, store: ObjectStore, entries: Sequence[LabelSpaceEntry]) -> None:
        shard_keys: list[str] = []
        columns: dict[str, list[np.ndarray]] = {
            name: [] for name in ("shard", "offset", "size", "label", "dataset")
        }
        for dataset_index, entry in enumerate(entries):
            table = read_manifest(store, entry.manifest_key)
            keys, shard_codes = np.unique(
                np.asarray(table["shard"].to_pylist(), dtype=object), return_inverse=True
            )
            labels = table["label"].to_numpy().astype(np.int64)
            if len(labels) and (labels.min() < 0 or labels.max() >= entry.num_classes):
                raise InvalidInputError(
                    f"{entry.dataset_name}@{entry.version}: labels exceed its {entry.num_classes} classes"
                )
            columns["shard"].append(shard_codes.astype(np.int64) + len(shard_keys))
            shard_keys.extend(str(key) for key in keys)
            columns["offset"].append(table["offset"].to_numpy().astype(np.int64))
            columns["size"].append(table["size"].to_numpy().astype(np.int64))
            columns["label"].append(labels + entry.class_offset)
            columns["dataset"].append(np.full(len(labels), dataset_index, dtype=np.int64))
        merged = {
            name: np.concatenate(parts) if parts else np.zeros(0, np.int64) for name, parts in columns.items()
        }
        order = np.argsort(merged["shard"], kind="stable")  # group by shard; keep member order inside
        self.shard_keys = shard_keys
        self.shard = merged["shard"][order]
        self.offset = merged["offset"][order]
        self.size = merged["size"][order]
        self.label = merged["label"][order]
        self.dataset = merged["dataset"][order]
        self.shard_starts = np.searchsorted(self.shard, np.arange(len(shard_keys) + 1))

    def __len__(self) -> int:
        return len(self.label)
