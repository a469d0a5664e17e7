"""ONE real 2-worker Ray Train run through the `local` launcher, shared by every assertion of this module."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from safetensors.torch import load_file
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from facefleet.nn.backbones import get_backbone
from facefleet.nn.probe import make_probe_input
from facefleet.platform.db import migrate
from facefleet.platform.db.models import Run
from facefleet.platform.db.session import make_engine, session_scope
from facefleet.platform.models import service as registry
from facefleet.platform.runs import service
from facefleet.platform.settings import get_settings
from facefleet.platform.signing import public_key_pem, verify_signature
from facefleet.platform.store import ObjectStore, get_store
from tests.workers.train_helpers import launch_and_wait, register_tiny_datasets, run_log, tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@dataclass
class FinishedRun:
    run_id: int
    engine: Engine
    store: ObjectStore
    exit_code: int
    log: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FinishedRun]:
    root = tmp_path_factory.mktemp("ray-e2e")
    env = {
        "FACEFLEET_DATA_DIR": str(root / "data"),
        "FACEFLEET_DATABASE_URL": f"sqlite:///{root / 'ff.db'}",
        "FACEFLEET_STORE_URL": (root / "store").as_uri(),
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        get_settings.cache_clear()
        migrate.upgrade(env["FACEFLEET_DATABASE_URL"])
        store = get_store()
        with session_scope() as session:
            names, verif = register_tiny_datasets(session, store, root / "synth")
            config = tiny_config(scaling={"num_workers": 2}, steps=8, checkpoint_interval=4, batch_size=16)
            run_id = service.create_run(
                session, dataset_names_or_version_ids=names, verification_sets=[verif], config=config
            ).id
        code = launch_and_wait(run_id)
        log = run_log(run_id)
        get_settings.cache_clear()
    engine = make_engine(env["FACEFLEET_DATABASE_URL"])
    yield FinishedRun(run_id, engine, store, code, log, env)
    engine.dispose()


def test_run_succeeds_with_progress_on_the_row(finished_run: FinishedRun) -> None:
    with Session(finished_run.engine) as session:
        run = session.get(Run, finished_run.run_id)
        assert run is not None
        assert (run.status, run.error, finished_run.exit_code) == ("succeeded", None, 0), finished_run.log
        assert (run.step, run.total_steps, run.progress) == (8, 8, 1.0)
        assert run.started_at and run.finished_at and run.heartbeat_at and run.launcher_job_id


def test_rank_zero_wrote_training_metrics(finished_run: FinishedRun) -> None:
    with Session(finished_run.engine) as session:
        series = service.run_metrics(session, finished_run.run_id)
    assert [step for step, _ in series["loss"]] == [2, 4, 6, 8]  # once per metrics interval, rank 0 only
    for name in (
        "identity_loss",
        "domain_loss",
        "domain_accuracy",
        "kl_loss",
        "lr",
        "images_per_second",
        "data_wait_fraction",
        "stage",
    ):
        assert name in series, name
    assert [value for _, value in series["stage"]] == [1.0, 2.0, 2.0, 2.0]  # switch at round(8/3)
    assert all(value > 0 for _, value in series["images_per_second"])
    assert "eval/verif/cosine/accuracy" in series and "eval/verif/biometricnet-M/auc" in series


def test_checkpoints_and_plots_are_in_the_store(finished_run: FinishedRun) -> None:
    keys = finished_run.store.list(f"runs/{finished_run.run_id}/")
    checkpoints = {
        key.split("/")[3]
        for key in keys
        if key.startswith(f"runs/{finished_run.run_id}/checkpoints/") and key.endswith("train_state.pt")
    }
    assert len(checkpoints) == 2  # steps 4 and 8
    assert f"runs/{finished_run.run_id}/plots/roc.png" in keys
    assert finished_run.store.get_bytes(f"runs/{finished_run.run_id}/plots/loss.png")[:4] == b"\x89PNG"


def test_model_version_is_registered_signed_and_consistent(
    finished_run: FinishedRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACEFLEET_DATA_DIR", finished_run.env["FACEFLEET_DATA_DIR"])  # the signing key's home
    get_settings.cache_clear()
    store = finished_run.store
    with Session(finished_run.engine) as session:
        model = registry.get_model_version(session, "facefleet", "candidate")
        assert model.run_id == finished_run.run_id
    card_bytes = store.get_bytes(f"models/facefleet/{model.version}/model_card.json")
    assert verify_signature(public_key_pem(), card_bytes, model.signature or "")
    card = json.loads(card_bytes)
    assert [d["class_offset"] for d in card["datasets"]] == [0, 8]
    assert card["config"]["biometric"]["enabled"] is True and -1.0 <= card["threshold"] <= 1.0
    for name in ("model.safetensors", "model.onnx"):
        store.get_file(f"models/facefleet/{model.version}/{name}", tmp_path / name)
        assert registry.sha256_file(tmp_path / name) == card["artifacts"][name]["sha256"]
    backbone = get_backbone(card["architecture"]["backbone"], **card["architecture"]["kwargs"]).eval()
    backbone.load_state_dict(load_file(str(tmp_path / "model.safetensors")))
    probe = make_probe_input(card["probe"]["seed"], card["probe"]["count"], card["input"]["size"])
    with torch.no_grad():
        torch_out = backbone(probe).numpy()
    np.testing.assert_allclose(torch_out, np.array(card["probe"]["embeddings"]), atol=1e-5)
    onnx_out = onnxruntime.InferenceSession(str(tmp_path / "model.onnx")).run(
        None, {"images": probe.numpy()}
    )[0]
    np.testing.assert_allclose(onnx_out, torch_out, atol=1e-4)
