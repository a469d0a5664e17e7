"""A `kind: landmarks` run end to end (Ray Train local mode): HELEN subset, train, NME, ONNX, registry;
then the registered model aligns a registration (--aligner <model>)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine

from facefleet.platform.datasets import service as datasets
from facefleet.platform.db.models import Run
from facefleet.platform.db.session import session_scope
from facefleet.platform.errors import InvalidInputError
from facefleet.platform.models import service as registry
from facefleet.platform.models.card import ModelCard
from facefleet.platform.models.service import CARD_FILE, version_prefix
from facefleet.platform.runs import service
from facefleet.platform.runs.schemas import TrainingConfig
from facefleet.platform.store import ObjectStore
from facefleet.workers.export import export_and_register
from facefleet.workers.train import run_training
from tests.faces.subsets import celeba_subset, helen_subset
from tests.terminal.model_factory import tiny_backbone

LANDMARK_CONFIG = {
    "kind": "landmarks",
    "model_name": "lm",
    "input_size": 32,
    "batch_size": 8,
    "steps": 6,
    "checkpoint_interval": 3,
    "metrics_interval": 2,
    "optimizer": {"name": "adamw", "lr": 0.003},
    "landmarks": {"grid": 4, "width": 8},
    "scaling": {"num_workers": 0},
    "max_failures": 0,
}


def test_landmarks_run_trains_exports_and_aligns(
    sqlite_engine: Engine, local_store: ObjectStore, tmp_path: Path
) -> None:
    # 12 photos: by the fixed split (sha256 of the name) some are held out for the NME.
    folder = helen_subset(tmp_path / "helen", count=12)
    with session_scope() as session:
        version = datasets.register_dataset_version(
            session, local_store, name="helen", source=folder, kind="landmarks"
        )
        assert version.report["landmarks"]["test_faces"] >= 1
        with pytest.raises(InvalidInputError, match="is a landmarks dataset; expected train"):
            service.create_run(session, dataset_names_or_version_ids=["helen"], config={"backbone": "tiny"})
        run_id = service.create_run(
            session, dataset_names_or_version_ids=["helen"], config=LANDMARK_CONFIG
        ).id
    assert run_training(run_id) == "succeeded"
    with session_scope() as session:
        run = session.get(Run, run_id)
        assert run is not None and run.status == "succeeded", run.error if run else None
        series = service.run_metrics(session, run_id)
        model = registry.get_model_version(session, "lm", "candidate")
    assert {"class_loss", "localisation_loss", "nme_eye_centres", "failure_rate"} <= set(series)
    assert run.summary["model"] == {"name": "lm", "version": model.version}
    assert run.summary["onnx_max_abs_diff"] < 1e-3
    assert {"model.onnx", "model.safetensors"} <= set(model.artifacts)

    # The registered model aligns a registration: MTCNN's box, the model's five points.
    photos = celeba_subset(tmp_path / "celeb", identities=1, images=2, blank=False)
    with session_scope() as session:
        aligned = datasets.register_dataset_version(
            session, local_store, name="celeb", source=photos, align=True, aligner=f"lm@{model.version}"
        )
        assert aligned.report["alignment"]["aligner"] == "lm"
        assert aligned.report["alignment"]["aligner_version"] == str(model.version)
        assert aligned.image_count == 2
        aligned_id = aligned.id
        with pytest.raises(InvalidInputError, match="not a landmark model"):
            registry_model_as_aligner(session, local_store, photos)

    # A recognition model trained on that version ships MTCNN and the landmark model for terminals.
    with session_scope() as session:
        run = Run(name="rec", status="succeeded")
        session.add(run)
        session.flush()
        recognition, _ = export_and_register(
            session,
            local_store,
            run_id=run.id,
            backbone=tiny_backbone(0),
            config=TrainingConfig(model_name="rec", backbone="tiny", embedding_dim=32, input_size=32),
            datasets=[],
            metrics={},
            threshold=0.5,
            dataset_version_ids=[aligned_id],
        )
        card = ModelCard.model_validate_json(
            local_store.get_bytes(f"{version_prefix('rec', recognition.version)}/{CARD_FILE}")
        )
    assert card.aligner is not None and card.aligner.name == "lm"
    assert card.aligner.files["landmarks"] == "landmarks.onnx" and "landmarks.onnx" in card.artifacts
    assert (card.aligner.landmark_input_size, card.aligner.crop_scale) == (32, 1.15)


def registry_model_as_aligner(session, store: ObjectStore, photos: Path) -> None:  # type: ignore[no-untyped-def]
    """An embedding model named as the aligner is refused (registered here with a fake kind-less card)."""
    from facefleet.platform.models.card import ArchitectureSpec, InputSpec, ModelCard, ProbeSpec

    folder = photos.parent / "emb"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"not used")
    card = ModelCard(
        name="emb",
        version=0,
        architecture=ArchitectureSpec(backbone="tiny"),
        input=InputSpec(),
        embedding_dim=4,
        threshold=0.5,
        artifacts={"model.onnx": registry.artifact_info(folder / "model.onnx")},
        probe=ProbeSpec(seed=0, count=1, embeddings=[[0.0] * 4]),
    )
    registry.register_model_version(session, store, name="emb", run_id=None, artifacts_dir=folder, card=card)
    datasets.register_dataset_version(session, store, name="celeb2", source=photos, align=True, aligner="emb")


def test_landmark_config_refusals(sqlite_engine: Engine, local_store: ObjectStore, tmp_path: Path) -> None:
    folder = helen_subset(tmp_path / "helen", count=2)
    with session_scope() as session:
        datasets.register_dataset_version(session, local_store, name="helen", source=folder, kind="landmarks")
        with pytest.raises(InvalidInputError, match="stride of 4, 8 or 16"):
            service.create_run(
                session,
                dataset_names_or_version_ids=["helen"],
                config={**LANDMARK_CONFIG, "landmarks": {"grid": 5}},
            )
