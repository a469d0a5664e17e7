"""The whole loop, as `make demo` runs it (scaled down): synthetic datasets -> registration -> two real
2-worker Ray Train runs (dataset-aware and naive) -> evaluation -> signed model in the registry -> canary
deployment to two simulated terminals -> enroll + verify on each."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from facefleet.demo import model_to_deploy, run_demo
from facefleet.platform.db.models import (
    DatasetVersion,
    DeviceDeployment,
    ModelAlias,
    ModelVersion,
    OutboxEvent,
    RunMetric,
)
from facefleet.platform.db.session import session_scope
from facefleet.platform.settings import get_settings
from facefleet.platform.signing import public_key_pem, verify_signature
from facefleet.platform.store import get_store


@pytest.mark.slow
def test_demo_runs_the_whole_loop() -> None:
    result = run_demo(steps=40, identities=16, images=6)

    assert [run.status for run in result.runs] == ["succeeded", "succeeded"]
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(DatasetVersion)) == 4  # 3 train + verification
        assert session.scalar(select(func.count()).select_from(OutboxEvent)) == 4  # one "ready" event each
        for run in result.runs:
            evaluation = run.summary["evaluation"][result.verification_set]["cosine"]
            assert 0.0 <= evaluation["accuracy"] <= 1.0
            metric_names = set(session.scalars(select(RunMetric.name).where(RunMetric.run_id == run.run_id)))
            assert {"lr", "images_per_second", "data_wait_fraction"} <= metric_names
        model = result.runs[0].summary["model"]
        version = session.scalars(
            select(ModelVersion).where(
                ModelVersion.name == model["name"], ModelVersion.version == model["version"]
            )
        ).one()
        alias = session.get(ModelAlias, (model["name"], "candidate"))
        assert alias is not None and alias.model_version_id == version.id
        installs = session.scalars(select(DeviceDeployment.status)).all()
        assert installs == ["installed", "installed"]
        deployed_model = model_to_deploy(result.runs, result.verification_set).summary["model"]
        deployed = session.scalars(
            select(ModelVersion.id).where(
                ModelVersion.name == deployed_model["name"], ModelVersion.version == deployed_model["version"]
            )
        ).one()

    store = get_store()
    card_bytes = store.get_bytes(version.artifacts["model_card.json"]["key"])
    assert version.signature and verify_signature(public_key_pem(), card_bytes, version.signature)
    card = json.loads(card_bytes)
    assert set(card["artifacts"]) >= {"model.safetensors", "model.onnx"}
    assert all(store.exists(key) for key in result.plots)

    assert len(result.terminals) == 2
    for terminal in result.terminals:
        assert terminal["model_version_id"] == deployed
        assert -1.0 <= terminal["genuine_score"] <= 1.0
    assert (get_settings().data_dir / "demo" / "terminals").is_dir()
