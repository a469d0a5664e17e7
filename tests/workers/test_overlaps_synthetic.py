"""The overlap finder at the end of a real (local-mode) run on synthetic datasets that share known people
under other labels: the list is computed in the worker, stored with the run, paged, and scored against the
generator's ground truth. Six steps: what is listed is measured in tests/nn/test_overlaps_learned.py (one
measured run of 200 steps of a demo-like ArcFace config did not learn these faces: every centre cosine
was above 0.97, and the list held 1 correct pair of 4)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from facefleet.platform.datasets.service import register_dataset_version
from facefleet.platform.db.models import Run
from facefleet.platform.db.session import session_scope
from facefleet.platform.runs import service
from facefleet.platform.runs.overlaps import get_run_overlaps, load_run_overlaps, overlap_precision_recall
from facefleet.platform.store import ObjectStore
from facefleet.workers.synthetic import generate_synthetic_datasets
from facefleet.workers.train import run_training
from tests.workers.train_helpers import tiny_config

OVERLAP_CONFIG: dict[str, Any] = tiny_config(
    embedding_dim=32,
    batch_size=32,
    steps=6,
    checkpoint_interval=3,
    metrics_interval=2,
    eval_pairs_per_dataset=20,
    head={"kind": "cosface", "s": 16.0, "m3": 0.2, "crossing_p": 0.0},
    optimizer={"name": "sgd", "lr": 0.1},
    biometric={"enabled": False},
)


def register_overlapping(
    session: Session, store: ObjectStore, folder: Path, *, seed: int
) -> tuple[list[str], list[list[list[str]]]]:
    """Two synthetic datasets of 16 people, 8 in both under other labels; (names, same-person groups)."""
    result = generate_synthetic_datasets(
        folder,
        num_datasets=2,
        identities_per_dataset=16,
        images_per_identity=6,
        overlap_fraction=0.5,
        verification_identities=4,
        verification_pairs=20,
        image_size=32,
        seed=seed,
    )
    names = []
    for directory in result.dataset_dirs:
        register_dataset_version(session, store, name=directory.name, source=directory, kind="train")
        names.append(directory.name)
    session.flush()
    truth = json.loads(result.ground_truth_file.read_text())["same_person"]
    return names, list(truth.values())


@pytest.mark.slow
def test_a_finished_run_stores_its_overlap_list(
    sqlite_engine: Engine, local_store: ObjectStore, tmp_path: Path
) -> None:
    seed = 0
    with session_scope() as session:
        names, truth = register_overlapping(session, local_store, tmp_path / "synth", seed=seed)
        run_id = service.create_run(
            session, dataset_names_or_version_ids=names, config={**OVERLAP_CONFIG, "seed": seed}
        ).id
    assert run_training(run_id) == "succeeded"
    with session_scope() as session:
        run = session.get(Run, run_id)
        assert run is not None
        summary = run.summary["overlaps"]
        document = load_run_overlaps(session, local_store, run_id)
        page = get_run_overlaps(session, local_store, run_id, offset=1, limit=2)
    assert summary["count"] == document.count == len(document.pairs)
    assert page.pairs == document.pairs[1:3] and page.count == document.count
    assert {p.first.dataset for p in document.pairs} <= {names[0]}
    assert document.datasets == [f"{names[0]}:1", f"{names[1]}:1"] and document.calibration_classes == 32
    assert all(p.score >= document.threshold for p in document.pairs)
    score = overlap_precision_recall(document, truth)
    assert score.true_pairs == 8 and score.found == document.count
    assert 0.0 <= score.precision <= 1.0 and 0.0 <= score.recall <= 1.0
