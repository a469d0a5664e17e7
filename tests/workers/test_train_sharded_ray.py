"""ONE real 2-worker Ray Train run with the sharded head (Partial FC, r = 0.5), killed once after its
first checkpoint: it resumes from the full-matrix checkpoint, finishes, and registers a model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from facefleet.platform.db.session import session_scope
from facefleet.platform.models import service as registry
from facefleet.platform.runs import service
from facefleet.platform.store import ObjectStore
from tests.workers.fail_once_worker import FAIL_ONCE_ENV, MODULE
from tests.workers.train_helpers import launch_and_wait, register_tiny_datasets, run_log, tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_sharded_head_trains_resumes_and_registers(
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
            head={"sharded": True, "sample_rate": 0.5, "crossing_p": 0.1},
        )
        run_id = service.create_run(session, dataset_names_or_version_ids=names, config=config).id
    code = launch_and_wait(run_id, module=MODULE)
    log = run_log(run_id)
    with session_scope() as session:
        run = service.get_run(session, run_id)
        assert (run.status, code) == ("succeeded", 0), (run.error, log)
        series = service.run_metrics(session, run_id)
        assert registry.get_model_version(session, "facefleet", "candidate").run_id == run_id
        classes = sum(row.num_classes for row in run.datasets if row.role == "train")
    # the injected crash happened (rank 0 raised after the committed step-4 checkpoint) and the new worker
    # group loaded that sharded checkpoint
    assert series["resumed_from_step"] == [(4, 4.0)], log
    assert "resumed from the checkpoint at step 4" in log
    assert all(torch.isfinite(torch.tensor([v for _, v in series["identity_loss"]])))
    # the checkpoint holds the full class matrix (both shards' rows), as an unsharded run's would
    key = sorted(k for k in store.list(f"runs/{run_id}/checkpoints/") if k.endswith("train_state.pt"))[-1]
    local = tmp_path / "state.pt"
    local.write_bytes(store.get_bytes(key))
    payload = torch.load(local, weights_only=True)
    assert payload["model"]["head.weight"].shape == (classes, 16)
    momentum = payload["optimizer"]["state"]
    assert any(v.get("momentum_buffer", torch.zeros(0)).shape == (classes, 16) for v in momentum.values())
