"""ONE real 2-worker Ray Train ``kind: distill`` run through the `local` launcher: a tiny teacher trained in
the test and registered, a tiny student at another input and embedding size, an inspection set made by the
real collection path (record_attempt, label_attempt_audited, create_inspection_set); the registered
student's signed card names its teacher and its inspection set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from sqlalchemy.orm import Session

from facefleet.nn.probe import make_probe_input
from facefleet.platform.db import migrate
from facefleet.platform.db.models import Run
from facefleet.platform.db.session import make_engine, session_scope
from facefleet.platform.models import service as registry
from facefleet.platform.runs import service
from facefleet.platform.settings import get_settings
from facefleet.platform.signing import public_key_pem, verify_signature
from facefleet.platform.store import get_store
from facefleet.terminal.bundle import TerminalCard
from facefleet.terminal.runtime import build_backbone
from tests.terminal.model_factory import register_test_model, trained_backbone
from tests.workers.distill_helpers import attempts_from_folder, register_inspection_set
from tests.workers.train_helpers import launch_and_wait, register_tiny_datasets, run_log

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_distill_run_on_two_ray_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "FACEFLEET_DATA_DIR": str(tmp_path / "data"),
        "FACEFLEET_DATABASE_URL": f"sqlite:///{tmp_path / 'ff.db'}",
        "FACEFLEET_STORE_URL": (tmp_path / "store").as_uri(),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    migrate.upgrade(env["FACEFLEET_DATABASE_URL"])
    store = get_store()
    teacher_net = trained_backbone(0, steps=30)  # tiny, 32 px, 32-d
    with session_scope() as session:
        names, verif = register_tiny_datasets(session, store, tmp_path / "synth")
        teacher = register_test_model(
            session, store, tmp_path / "teacher", name="teacher", net=teacher_net, threshold=0.35
        )
        teacher_version, teacher_sha = teacher.version, teacher.card_sha256
        register_inspection_set(
            session,
            store,
            "field-week1",
            attempts_from_folder(tmp_path / "synth" / "synth_0", 12),
            threshold=0.35,
        )
        config = {
            "kind": "distill",
            "model_name": "student",
            "backbone": "tiny",
            "input_size": 24,  # the teacher's is 32: batches are resized for each net
            "embedding_dim": 16,  # the teacher's is 32: a training-only projection
            "batch_size": 8,
            "steps": 6,
            "checkpoint_interval": 3,
            "metrics_interval": 2,
            "data_workers": 0,
            "eval_pairs_per_dataset": 20,
            "cache_bytes": 8 << 20,
            "optimizer": {"lr": 0.05},
            "scaling": {"num_workers": 2},
            "max_failures": 0,
            "distill": {
                "teacher": "teacher@candidate",
                "inspection_sets": ["field-week1"],
                "inspection_batch": 4,
                "calibration": "batch",  # format 2 at the student's own batch threshold
            },
        }
        run_id = service.create_run(
            session, dataset_names_or_version_ids=names, verification_sets=[verif], config=config
        ).id
    code = launch_and_wait(run_id)
    engine = make_engine(env["FACEFLEET_DATABASE_URL"])
    try:
        with Session(engine) as session:
            run = session.get(Run, run_id)
            assert run is not None
            assert (run.status, run.error, code) == ("succeeded", None, 0), run_log(run_id)
            assert (run.step, run.total_steps) == (6, 6)
            series = service.run_metrics(session, run_id)
            model = registry.get_model_version(session, "student", "candidate")
            summary = run.summary
    finally:
        engine.dispose()
    for name in (
        "loss",
        "embedding_loss",
        "similarity_loss",
        "inspection_loss",
        "decision_threshold",
        "images_per_second",
    ):
        assert [step for step, _ in series[name]] == [2, 4, 6], name  # rank 0, every metrics interval
    assert "eval/verif/cosine/auc" in series and "inspection/field-week1:1/agreement" in series
    assert summary["teacher"] == {"name": "teacher", "version": teacher_version}
    assert summary["inspection_sets"] == ["field-week1:1"]

    card_bytes = store.get_bytes(f"models/student/{model.version}/model_card.json")
    assert verify_signature(public_key_pem(), card_bytes, model.signature or "")
    card = json.loads(card_bytes)
    distillation = card["distillation"]
    assert (distillation["teacher_name"], distillation["teacher_version"]) == ("teacher", teacher_version)
    assert distillation["teacher_card_sha256"] == teacher_sha
    assert distillation["teacher_threshold"] == pytest.approx(0.35)
    assert distillation["inspection_sets"] == [
        {"name": "field-week1", "version": 1, "attempts": 12, "genuine": 6, "impostor": 6}
    ]
    assert card["architecture"]["backbone"] == "tiny" and card["input"]["size"] == 24
    assert card["embedding_dim"] == 16 and -1.0 <= card["threshold"] <= 1.0

    # Deployable like any model: a terminal rebuilds it from the card and the bundle, ONNX matches torch.
    folder = tmp_path / "bundle"
    folder.mkdir()
    for name in ("model.safetensors", "model.onnx"):
        store.get_file(f"models/student/{model.version}/{name}", folder / name)
        assert registry.sha256_file(folder / name) == card["artifacts"][name]["sha256"]
    backbone = build_backbone(TerminalCard.model_validate(card), folder / "model.safetensors")
    probe = make_probe_input(card["probe"]["seed"], card["probe"]["count"], 24)
    with torch.no_grad():
        torch_out = backbone(probe).numpy()
    np.testing.assert_allclose(torch_out, np.array(card["probe"]["embeddings"]), atol=1e-5)
    onnx_out = onnxruntime.InferenceSession(str(folder / "model.onnx")).run(None, {"images": probe.numpy()})[
        0
    ]
    np.testing.assert_allclose(onnx_out, torch_out, atol=1e-4)
