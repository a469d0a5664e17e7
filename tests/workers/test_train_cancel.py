"""Cancelling runs that really run (local-mode worker processes started by the `local` launcher)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import Engine

from facefleet.platform.db.models import Run
from facefleet.platform.db.session import session_scope
from facefleet.platform.runs import service
from facefleet.platform.runs.launchers import LocalLauncher
from facefleet.platform.store import ObjectStore
from tests.workers.train_helpers import register_tiny_datasets, run_log, tiny_config

pytestmark = pytest.mark.timeout(300)


def _start_long_run(store: ObjectStore, folder: Path) -> tuple[int, LocalLauncher, str]:
    with session_scope() as session:
        names, _ = register_tiny_datasets(session, store, folder)
        run_id = service.create_run(
            session,
            dataset_names_or_version_ids=names,
            config=tiny_config(steps=100_000, checkpoint_interval=50_000),
        ).id
    launcher = LocalLauncher()
    with session_scope() as session:
        job_id = service.start_run(session, service.get_run(session, run_id), launcher).launcher_job_id
    assert job_id is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until rank 0 has written progress
        with session_scope() as session:
            run = session.get(Run, run_id)
            if run is not None and run.status == "running" and run.step > 0:
                return run_id, launcher, job_id
        time.sleep(0.5)
    raise AssertionError(f"run never started:\n{run_log(run_id)}")


def test_graceful_cancel_stops_a_running_run(
    sqlite_engine: Engine, local_store: ObjectStore, tmp_path: Path
) -> None:
    run_id, launcher, job_id = _start_long_run(local_store, tmp_path / "synth")
    with session_scope() as session:
        assert (
            service.cancel_run(session, run_id, launcher=launcher).status == "running"
        )  # stops at next check
    assert launcher.wait(job_id, 120) == 0
    with session_scope() as session:
        run = session.get(Run, run_id)
        assert run is not None and run.status == "cancelled", run_log(run_id)
        assert 0 < run.step < run.total_steps and run.finished_at is not None
        with pytest.raises(Exception, match="already cancelled"):
            service.cancel_run(session, run_id, launcher=launcher)
    assert launcher.status(job_id) == "finished"


def test_forced_cancel_stops_the_process(
    sqlite_engine: Engine, local_store: ObjectStore, tmp_path: Path
) -> None:
    run_id, launcher, job_id = _start_long_run(local_store, tmp_path / "synth")
    with session_scope() as session:
        assert service.cancel_run(session, run_id, force=True, launcher=launcher).status == "cancelled"
    assert launcher.wait(job_id, 60) != 0
    with session_scope() as session:
        run = session.get(Run, run_id)
        assert run is not None and run.status == "cancelled" and run.step < run.total_steps
