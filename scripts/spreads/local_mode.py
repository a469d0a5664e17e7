"""Measures the loss curve tests/workers/test_train_local_mode.py asserts on, over config seeds.

ATEN_CPU_CAPABILITY=default PYTHONPATH=. python scripts/spreads/local_mode.py 0 1 2 3 4
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import torch


def main(seeds: list[int]) -> None:
    for seed in seeds:
        with tempfile.TemporaryDirectory() as folder:
            tmp = Path(folder)
            os.environ["FACEFLEET_DATA_DIR"] = str(tmp / "data")
            os.environ["FACEFLEET_DATABASE_URL"] = f"sqlite:///{tmp / 'test.db'}"
            os.environ["FACEFLEET_STORE_URL"] = (tmp / "store").resolve().as_uri()
            from facefleet.platform.db import migrate
            from facefleet.platform.db.session import engine_for, session_scope
            from facefleet.platform.runs import service
            from facefleet.platform.settings import get_settings
            from facefleet.platform.store.local import LocalStore
            from facefleet.workers.train import run_training
            from tests.workers.train_helpers import register_tiny_datasets, tiny_config

            get_settings.cache_clear()
            engine_for.cache_clear()
            migrate.upgrade(os.environ["FACEFLEET_DATABASE_URL"])
            with session_scope() as session:
                names, verif = register_tiny_datasets(session, LocalStore(tmp / "store"), tmp / "synth")
                run_id = service.create_run(
                    session,
                    dataset_names_or_version_ids=names,
                    verification_sets=[verif],
                    config=tiny_config(steps=6, seed=seed),
                ).id
            status = run_training(run_id)
            with session_scope() as session:
                losses = [value for _, value in service.run_metrics(session, run_id)["loss"]]
            row = {
                "capability": torch.backends.cpu.get_cpu_capability(),
                "seed": seed,
                "status": status,
                "losses": losses,
                "last_minus_first": losses[-1] - losses[0],
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main([int(s) for s in sys.argv[1:]] or [0, 1, 2, 3, 4])
