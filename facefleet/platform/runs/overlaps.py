"""A run's overlap list: identity pairs across its training datasets that are probably one person.

The worker computes it when the run ends (``facefleet.workers.overlaps``; the rule is in
``facefleet.nn.overlaps``) and writes the whole list to the object store at ``runs/<id>/overlaps.json``,
plus a small summary under the run's ``summary["overlaps"]``. This module is the read side (service of
``GET /v1/runs/{id}/overlaps`` and ``facefleet runs overlaps``) and the scoring against a known truth.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from facefleet.platform.errors import ConflictError, NotFoundError
from facefleet.platform.runs import service
from facefleet.platform.store import ObjectStore

MAX_PAGE = 1000
RULE = (
    "mutual nearest neighbours of class centres across every two training datasets, kept when their "
    "cosine reaches the cut that at most a share false_match_rate of the classes reach with their most "
    "similar other class of the same dataset (a different person by construction)"
)


def overlaps_key(run_id: int) -> str:
    return f"runs/{run_id}/overlaps.json"


class OverlapIdentity(BaseModel):
    dataset: str = Field(description="dataset name")
    version: int
    identity: str = Field(description="the identity's folder name in that dataset")
    class_index: int = Field(description="global class index in the run's label space")


class OverlapEntry(BaseModel):
    first: OverlapIdentity
    second: OverlapIdentity
    score: float = Field(description="cosine similarity of the two class centres")


class OverlapHeader(BaseModel):
    run_id: int
    centres: str = Field(description="'embeddings' (mean flip-fused embedding of training images) or 'head'")
    threshold: float = Field(description="the calibrated cut: pairs listed have score >= threshold")
    false_match_rate: float = Field(
        description="share of identities present in one dataset only that the cut lets through (measured "
        "within datasets)"
    )
    calibration_classes: int = Field(description="classes whose nearest same-dataset score set the cut")
    calibration_reliable: bool = Field(
        description="False when there were fewer than 1/false_match_rate classes: the cut then sits just "
        "above the highest nearest same-dataset score"
    )
    datasets: list[str] = Field(description="name:version of the training datasets, in label-space order")
    rule: str = RULE
    count: int = Field(description="number of pairs found")


class RunOverlaps(OverlapHeader):
    """The stored document: the header and every pair, best score first."""

    pairs: list[OverlapEntry]

    def summary(self) -> dict[str, object]:
        """What goes into the run's summary (the list itself stays in the object store)."""
        return {
            **self.model_dump(include=set(OverlapHeader.model_fields) - {"run_id", "rule", "datasets"}),
            "key": overlaps_key(self.run_id),
            "top": [entry.model_dump() for entry in self.pairs[:3]],
        }


class OverlapPage(OverlapHeader):
    """One page of a run's overlap list."""

    offset: int
    limit: int
    pairs: list[OverlapEntry]


class OverlapScore(BaseModel):
    precision: float
    recall: float
    found: int
    true_pairs: int
    correct: int


def load_run_overlaps(session: Session, store: ObjectStore, run_id: int) -> RunOverlaps:
    """The run's whole overlap list; 404 (no such run, or no list), 409 (not succeeded, one dataset)."""
    try:
        run = service.get_run(session, run_id)
    except NotFoundError:
        raise NotFoundError(f"run {run_id} does not exist; `facefleet runs list` shows the runs") from None
    train = [row for row in run.datasets if row.role == "train"]
    if len(train) < 2:
        raise ConflictError(
            f"run {run_id} trained on {len(train)} dataset; overlaps are identities shared by two or more "
            "training datasets, so a run needs at least two"
        )
    if run.status != "succeeded":
        raise ConflictError(
            f"run {run_id} is {run.status}; the overlap list is computed when a run succeeds"
            + ("" if run.status in service.FINISHED else ": wait for it (`facefleet runs watch`)")
        )
    key = overlaps_key(run_id)
    if not store.exists(key):
        raise NotFoundError(
            f"run {run_id} has no overlap list (runs that finished before overlaps were computed have none; "
            "retrain to get one)"
        )
    return RunOverlaps.model_validate_json(store.get_bytes(key))


def get_run_overlaps(
    session: Session, store: ObjectStore, run_id: int, *, offset: int = 0, limit: int = 100
) -> OverlapPage:
    """One page (``offset``, at most ``limit`` pairs, best score first) of the run's overlap list."""
    document = load_run_overlaps(session, store, run_id)
    limit = max(1, min(limit, MAX_PAGE))
    offset = max(0, offset)
    return OverlapPage(
        **document.model_dump(exclude={"pairs"}),
        offset=offset,
        limit=limit,
        pairs=document.pairs[offset : offset + limit],
    )


def truth_pairs(same_person: Iterable[Sequence[Sequence[str]]]) -> set[frozenset[tuple[str, str]]]:
    """Unordered pairs of (dataset, identity) from groups of places that are one person, across datasets
    only (e.g. the synthetic generator's ``ground_truth.json["same_person"].values()``)."""
    pairs: set[frozenset[tuple[str, str]]] = set()
    for group in same_person:
        places = [(str(place[0]), str(place[1])) for place in group]
        for i, first in enumerate(places):
            for second in places[i + 1 :]:
                if first[0] != second[0]:
                    pairs.add(frozenset((first, second)))
    return pairs


def overlap_precision_recall(
    document: RunOverlaps, same_person: Iterable[Sequence[Sequence[str]]]
) -> OverlapScore:
    """Precision and recall of a run's overlap list against known groups of (dataset name, identity folder)
    that are one person. Precision is 1.0 when nothing was found, recall 1.0 when there is nothing to find."""
    truth = truth_pairs(same_person)
    found = {
        frozenset(((p.first.dataset, p.first.identity), (p.second.dataset, p.second.identity)))
        for p in document.pairs
    }
    correct = len(found & truth)
    return OverlapScore(
        precision=correct / len(found) if found else 1.0,
        recall=correct / len(truth) if truth else 1.0,
        found=len(found),
        true_pairs=len(truth),
        correct=correct,
    )
