"""The end of a run with two or more training datasets: find the identities they probably share.

Class centres are the mean flip-fused embedding of up to ``IMAGES_PER_CLASS`` training images of each class
(seeded pick), unit length; the head's weight rows are the alternative (``centres="head"``). The rule and
its calibration are ``facefleet.nn.overlaps.find_overlaps``; the list goes to the object store and a
summary into the run's summary (``facefleet.platform.runs.overlaps``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facefleet.nn.overlaps import DEFAULT_FALSE_MATCH_RATE, find_overlaps
from facefleet.platform.datasets.shards import read_manifest
from facefleet.platform.runs.overlaps import OverlapEntry, OverlapIdentity, RunOverlaps, overlaps_key
from facefleet.platform.store import ObjectStore
from facefleet.workers.data import LabelSpaceEntry, load_manifest_images

logger = logging.getLogger(__name__)
IMAGES_PER_CLASS = 8
CHUNK = 256
Centres = Literal["embeddings", "head"]
CENTRES: Centres = "embeddings"  # measured against "head" in scripts/spreads/overlaps.py


@torch.no_grad()
def embedding_centres(
    backbone: nn.Module,
    store: ObjectStore,
    entries: Sequence[LabelSpaceEntry],
    input_size: int,
    *,
    images_per_class: int = IMAGES_PER_CLASS,
    seed: int = 0,
) -> tuple[torch.Tensor, list[list[str]]]:
    """([C, D] unit mean embeddings in label-space order, identity folder names per dataset)."""
    backbone.eval()
    device = next(backbone.parameters()).device
    rng = np.random.default_rng([seed, 20])
    centres: list[torch.Tensor] = []
    names: list[list[str]] = []
    for entry in entries:
        manifest = read_manifest(store, entry.manifest_key)
        labels = manifest["label"].to_numpy()
        identities = manifest["identity"].to_pylist()
        by_label = [np.flatnonzero(labels == label) for label in range(entry.num_classes)]
        names.append(
            [identities[int(rows[0])] if rows.size else f"class {i}" for i, rows in enumerate(by_label)]
        )
        picks = [
            rng.choice(rows, min(images_per_class, rows.size), replace=False) if rows.size else rows
            for rows in by_label
        ]
        flat = [int(row) for rows in picks for row in sorted(rows)]
        owner = torch.tensor([i for i, rows in enumerate(picks) for _ in rows], dtype=torch.long)
        embeddings = []
        for start in range(0, len(flat), CHUNK):
            images = load_manifest_images(store, manifest, flat[start : start + CHUNK], input_size).to(device)
            fused = backbone(images).float() + backbone(torch.flip(images, dims=[3])).float()
            embeddings.append(F.normalize(fused, dim=1).cpu())
        stacked = torch.cat(embeddings) if embeddings else torch.zeros(0, 1)
        sums = torch.zeros(entry.num_classes, stacked.shape[1]).index_add_(0, owner, stacked)
        centres.append(F.normalize(sums, dim=1))
    return torch.cat(centres), names


def identity_names(store: ObjectStore, entries: Sequence[LabelSpaceEntry]) -> list[list[str]]:
    names = []
    for entry in entries:
        manifest = read_manifest(store, entry.manifest_key)
        by_label: dict[int, str] = {}
        for label, identity in zip(
            manifest["label"].to_pylist(), manifest["identity"].to_pylist(), strict=True
        ):
            by_label.setdefault(int(label), str(identity))
        names.append([by_label.get(i, f"class {i}") for i in range(entry.num_classes)])
    return names


def compute_overlaps(
    run_id: int,
    store: ObjectStore,
    entries: Sequence[LabelSpaceEntry],
    backbone: nn.Module,
    *,
    input_size: int,
    head_weight: torch.Tensor | None = None,
    centres: Centres = "embeddings",
    false_match_rate: float = DEFAULT_FALSE_MATCH_RATE,
    seed: int = 0,
) -> RunOverlaps:
    """The run's overlap list (not stored; see ``store_overlaps``)."""
    if centres == "head":
        if head_weight is None:
            raise ValueError("centres='head' needs the head's weight rows")
        vectors, names = head_weight.detach().float().cpu(), identity_names(store, entries)
    else:
        vectors, names = embedding_centres(backbone, store, entries, input_size, seed=seed)
    result = find_overlaps(vectors, [e.num_classes for e in entries], false_match_rate=false_match_rate)
    owner = [(k, i) for k, entry in enumerate(entries) for i in range(entry.num_classes)]

    def identity(index: int) -> OverlapIdentity:
        k, local = owner[index]
        entry = entries[k]
        return OverlapIdentity(
            dataset=entry.dataset_name, version=entry.version, identity=names[k][local], class_index=index
        )

    pairs = [
        OverlapEntry(first=identity(p.first), second=identity(p.second), score=p.score) for p in result.pairs
    ]
    return RunOverlaps(
        run_id=run_id,
        centres=centres,
        threshold=result.threshold,
        false_match_rate=false_match_rate,
        calibration_classes=result.calibration_classes,
        calibration_reliable=result.calibration_reliable,
        datasets=[f"{e.dataset_name}:{e.version}" for e in entries],
        count=len(pairs),
        pairs=pairs,
    )


def store_overlaps(store: ObjectStore, document: RunOverlaps) -> dict[str, object]:
    store.put_bytes(
        overlaps_key(document.run_id), document.model_dump_json().encode(), content_type="application/json"
    )
    return document.summary()


def overlaps_at_run_end(
    run_id: int,
    store: ObjectStore,
    entries: Sequence[LabelSpaceEntry],
    backbone: nn.Module,
    *,
    input_size: int,
    seed: int,
    head_weight: torch.Tensor | None = None,
) -> dict[str, object] | None:
    """Compute and store the overlap list of a run with >= 2 training datasets; its summary (None: one
    dataset). A failure here is logged and reported in the summary, never fails the finished training.
    ``head_weight``: the identity head's class rows, used when ``CENTRES`` is "head"."""
    if len(entries) < 2:
        return None
    try:
        return store_overlaps(
            store,
            compute_overlaps(
                run_id,
                store,
                entries,
                backbone,
                input_size=input_size,
                seed=seed,
                head_weight=head_weight,
                centres=CENTRES,
            ),
        )
    except Exception as error:  # noqa: BLE001 - the model is trained and evaluated; say what went wrong
        logger.exception("run %s: finding overlapping identities failed", run_id)
        return {"error": f"finding overlapping identities failed: {error}"}
