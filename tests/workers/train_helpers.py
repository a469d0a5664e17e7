"""Shared helpers of the training tests: tiny synthetic datasets registered in a store, and a tiny config."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from facefleet.platform.datasets.service import register_dataset_version
from facefleet.platform.store import ObjectStore
from facefleet.workers.synthetic import generate_synthetic_datasets

TINY_CONFIG: dict[str, Any] = {
    "backbone": "tiny",
    "embedding_dim": 16,
    "input_size": 32,
    "batch_size": 16,
    "steps": 6,
    "checkpoint_interval": 3,
    "metrics_interval": 2,
    "data_workers": 0,
    "eval_pairs_per_dataset": 20,
    "cache_bytes": 8 << 20,
    "head": {"s": 16.0, "m2": 0.2},
    "optimizer": {"lr": 0.05},
    "scaling": {"num_workers": 0},
    "max_failures": 1,
    "biometric": {"enabled": True, "images_per_identity": 4, "layers": 2, "mu_nonmatch": 8.0},
}


def tiny_config(**overrides: Any) -> dict[str, Any]:
    config = copy.deepcopy(TINY_CONFIG)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    return config


def register_tiny_datasets(
    session: Session,
    store: ObjectStore,
    folder: Path,
    *,
    num_datasets: int = 2,
    identities: int = 8,
    images: int = 4,
) -> tuple[list[str], str]:
    """Synthetic train datasets synth_0.. and a verification set `verif`; returns (names, verif)."""
    result = generate_synthetic_datasets(
        folder,
        num_datasets=num_datasets,
        identities_per_dataset=identities,
        images_per_identity=images,
        verification_identities=6,
        verification_pairs=40,
        image_size=32,
        seed=3,
    )
    names = []
    for directory in result.dataset_dirs:
        register_dataset_version(session, store, name=directory.name, source=directory, kind="train")
        names.append(directory.name)
    register_dataset_version(
        session, store, name="verif", source=result.verification_dir, kind="verification"
    )
    session.flush()
    return names, "verif"


def launch_and_wait(run_id: int, timeout: float = 900.0, *, module: str | None = None) -> int:
    """Start a committed run through the real `local` launcher (a child process) and wait for it to exit;
    ``module``: another entrypoint (a test wrapper of the worker)."""
    from facefleet.platform.db.session import session_scope
    from facefleet.platform.runs import service
    from facefleet.platform.runs.launchers import LocalLauncher

    launcher = LocalLauncher(module=module) if module else LocalLauncher()
    with session_scope() as session:
        run = service.start_run(session, service.get_run(session, run_id), launcher)
        job_id = run.launcher_job_id
    assert job_id is not None
    code = launcher.wait(job_id, timeout)
    assert code is not None
    return code


def run_log(run_id: int) -> str:
    from facefleet.platform.runs.launchers import LocalLauncher

    path = LocalLauncher().log_path(run_id)
    return path.read_text(errors="replace")[-6000:] if path.exists() else ""
