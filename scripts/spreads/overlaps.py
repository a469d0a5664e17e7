"""Measures the overlap finder's precision and recall on synthetic datasets that share known people, over
seeds, for both kinds of class centre and several false-match rates (what tests/workers/test_overlaps.py
asserts on).

PYTHONPATH=. python scripts/spreads/overlaps.py [steps] [seeds...]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RATES = (0.2, 0.1, 0.05, 0.02, 0.01)


def main(steps: int, seeds: list[int]) -> None:
    for seed in seeds:
        with tempfile.TemporaryDirectory() as folder:
            tmp = Path(folder)
            os.environ["FACEFLEET_DATA_DIR"] = str(tmp / "data")
            os.environ["FACEFLEET_DATABASE_URL"] = f"sqlite:///{tmp / 'test.db'}"
            os.environ["FACEFLEET_STORE_URL"] = (tmp / "store").resolve().as_uri()
            from facefleet.platform.db import migrate
            from facefleet.platform.db.session import engine_for, session_scope
            from facefleet.platform.runs import service
            from facefleet.platform.runs.overlaps import overlap_precision_recall
            from facefleet.platform.settings import get_settings
            from facefleet.platform.store.local import LocalStore
            from facefleet.workers import overlaps
            from facefleet.workers.train import run_training
            from tests.workers.test_overlaps_synthetic import OVERLAP_CONFIG, register_overlapping

            get_settings.cache_clear()
            engine_for.cache_clear()
            migrate.upgrade(os.environ["FACEFLEET_DATABASE_URL"])
            store = LocalStore(tmp / "store")
            with session_scope() as session:
                names, truth = register_overlapping(session, store, tmp / "synth", seed=seed)
                run_id = service.create_run(
                    session,
                    dataset_names_or_version_ids=names,
                    config={**OVERLAP_CONFIG, "steps": steps, "seed": seed},
                ).id
            captured: dict[str, Any] = {}
            original = overlaps.overlaps_at_run_end

            def capture(
                *args: Any, captured: dict[str, Any] = captured, original: Any = original, **kwargs: Any
            ) -> Any:
                captured.update(args=args, kwargs=kwargs)
                return original(*args, **kwargs)

            overlaps.overlaps_at_run_end = capture  # type: ignore[assignment]
            started = time.monotonic()
            status = run_training(run_id)
            seconds = time.monotonic() - started
            overlaps.overlaps_at_run_end = original  # type: ignore[assignment]
            run_id_, _store, entries, backbone = captured["args"]
            kw = captured["kwargs"]
            for centres in ("embeddings", "head"):
                for rate in RATES:
                    doc = overlaps.compute_overlaps(
                        run_id,
                        store,
                        entries,
                        backbone,
                        input_size=kw["input_size"],
                        seed=seed,
                        head_weight=kw["head_weight"],
                        centres=centres,
                        false_match_rate=rate,  # type: ignore[arg-type]
                    )
                    score = overlap_precision_recall(doc, truth)
                    print(
                        json.dumps(
                            {
                                "seed": seed,
                                "steps": steps,
                                "status": status,
                                "seconds": round(seconds),
                                "centres": centres,
                                "rate": rate,
                                **score.model_dump(),
                                "threshold": round(doc.threshold, 3),
                            }
                        ),
                        flush=True,
                    )


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    main(args[0] if args else 200, args[1:] or [0, 1, 2])
