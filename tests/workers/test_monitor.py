"""The metric-drop evaluator (workers/monitor.py) scores with the folds a verification file declares, as the
run's evaluation does (workers/evaluate.py), not with folds of its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from facefleet.nn import verification
from facefleet.platform.datasets import layout
from facefleet.platform.datasets.service import get_version, register_dataset_version
from facefleet.platform.datasets.shards import read_pair_folds
from facefleet.platform.store import ObjectStore
from facefleet.workers import monitor
from tests.api.conftest import make_lfw_folder
from tests.terminal.model_factory import register_test_model


def test_monitor_uses_the_folds_the_pairs_file_declares(
    sqlite_engine: Engine, local_store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_lfw_folder(tmp_path / "lfw", people=4)
    # LFW header "2 folds of 2 pairs per class": fold 0 is the first 4 lines (all same), fold 1 the last 4.
    # Stratified folds (what the evaluator would cut without the header) mix both kinds in each fold.
    lines = (folder / "pairs.txt").read_text().splitlines()
    (folder / "pairs.txt").write_text("\n".join(["2\t2", *lines[1:]]) + "\n")
    seen: list[Any] = []

    def spy(*args: Any, **kwargs: Any) -> verification.VerificationMetrics:
        seen.append(kwargs.get("fold_ids"))
        return verification.verification_metrics(*args, **kwargs)

    monkeypatch.setattr(monitor, "verification_metrics", spy)
    with Session(sqlite_engine) as session:
        register_dataset_version(session, local_store, name="lfw", source=folder, kind="verification")
        model = register_test_model(session, local_store, tmp_path / "model", seed=3)
        session.commit()
        scores = monitor.evaluate_model_version(session, model, ["lfw"], "accuracy", store=local_store)
        version = get_version(session, "lfw")
    declared = read_pair_folds(local_store, layout.pairs_key("lfw", version.version))
    assert declared == [0, 0, 0, 0, 1, 1, 1, 1]
    assert len(seen) == 1 and seen[0] is not None and list(seen[0]) == declared
    assert set(scores) == {"lfw"}
