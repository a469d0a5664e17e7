"""A run on the S3 store (moto over HTTP) whose rank 0 crashes once after a checkpoint resumes from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from facefleet.platform.db.session import session_scope
from facefleet.platform.models import service as registry
from facefleet.platform.runs import service
from facefleet.platform.store import ObjectStore
from tests.workers.fail_once_worker import FAIL_ONCE_ENV, MODULE
from tests.workers.train_helpers import launch_and_wait, register_tiny_datasets, run_log, tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.mark.parametrize("store", ["s3"], indirect=True)
def test_worker_failure_resumes_from_the_s3_checkpoint(
    sqlite_engine: object, store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FAIL_ONCE_ENV, "4")  # rank 0 raises once, after the checkpoint of step 4 is committed
    with session_scope() as session:
        names, _ = register_tiny_datasets(session, store, tmp_path / "synth")
        config = tiny_config(
            scaling={"num_workers": 2},
            steps=8,
            checkpoint_interval=4,
            max_failures=1,
            eval_pairs_per_dataset=0,
            biometric={"enabled": False},
        )
        run_id = service.create_run(session, dataset_names_or_version_ids=names, config=config).id
    code = launch_and_wait(run_id, module=MODULE)
    log = run_log(run_id)
    with session_scope() as session:
        run = service.get_run(session, run_id)
        assert (run.status, code) == ("succeeded", 0), (run.error, log)
        series = service.run_metrics(session, run_id)
        assert registry.get_model_version(session, "facefleet", "candidate").run_id == run_id
    assert "injected failure after the checkpoint at step 4" in log
    assert series["resumed_from_step"] == [(4, 4.0)]
    # Steps up to the checkpoint ran once; only what came after it was trained (again) after the restart.
    loss_steps = [step for step, _ in series["loss"]]
    assert loss_steps.count(2) == 1 and loss_steps.count(4) == 1 and loss_steps[-1] == 8
    checkpoint_keys = [k for k in store.list(f"runs/{run_id}/checkpoints/") if k.endswith("train_state.pt")]
    assert len(checkpoint_keys) == 2
