"""Runs service: creation with class offsets, listing, progress, metrics, cancel rules, launcher payloads."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from facefleet.platform.db.models import Run
from facefleet.platform.errors import ConflictError, InvalidInputError, NotFoundError
from facefleet.platform.runs import lifecycle, service
from facefleet.platform.runs.launchers import (
    KubeRayLauncher,
    RayJobsLauncher,
    get_launcher,
    job_submission_payload,
)
from facefleet.platform.settings import Settings
from facefleet.platform.store import ObjectStore
from tests.workers.train_helpers import register_tiny_datasets, tiny_config


@pytest.fixture
def registered(session: Session, local_store: ObjectStore, tmp_path: Path) -> tuple[list[str], str]:
    return register_tiny_datasets(session, local_store, tmp_path / "synth", num_datasets=3)


def test_create_run_assigns_class_offsets_in_order(
    session: Session, registered: tuple[list[str], str]
) -> None:
    names, verif = registered
    run = service.create_run(
        session,
        dataset_names_or_version_ids=[names[2], f"{names[0]}:1"],
        verification_sets=[verif],
        config=tiny_config(),
        created_by="alice",
    )
    view = service.run_view(session, service.get_run(session, run.id))
    assert view.status == "queued" and view.created_by == "alice" and view.total_steps == 6
    assert [(d.dataset, d.role, d.class_offset, d.num_classes) for d in view.datasets] == [
        (names[2], "train", 0, 8),
        (names[0], "train", 8, 8),
        (verif, "verification", 0, 0),
    ]
    assert view.config["head"]["s"] == 16.0 and view.config["reversal"]["lambda"] == 0.1


def test_create_run_rejects_wrong_kinds_and_missing_datasets(
    session: Session, registered: tuple[list[str], str]
) -> None:
    names, verif = registered
    with pytest.raises(InvalidInputError, match="verification dataset; expected train"):
        service.create_run(session, dataset_names_or_version_ids=[names[0], verif], config=tiny_config())
    with pytest.raises(NotFoundError, match="nosuch"):
        service.create_run(session, dataset_names_or_version_ids=[names[0], "nosuch"], config=tiny_config())
    with pytest.raises(InvalidInputError, match="listed twice"):
        service.create_run(session, dataset_names_or_version_ids=[names[0], names[0]], config=tiny_config())


def test_epochs_become_steps_from_the_image_count(
    session: Session, registered: tuple[list[str], str]
) -> None:
    names, _ = registered
    config = tiny_config(steps=None, epochs=2, scaling={"num_workers": 0})
    run = service.create_run(session, dataset_names_or_version_ids=names[:2], config=config)
    assert run.total_steps == 2 * 64 // 16  # 2 datasets x 8 identities x 4 images, batches of 16


def test_progress_metrics_and_listing(session: Session, registered: tuple[list[str], str]) -> None:
    names, _ = registered
    first = service.create_run(session, dataset_names_or_version_ids=names[:2], config=tiny_config())
    second = service.create_run(session, dataset_names_or_version_ids=names[1:], config=tiny_config())
    lifecycle.report_progress(session, first.id, step=3, total_steps=6, stage="training", eta_seconds=12.5)
    service.record_metrics(session, first.id, 2, {"loss": 3.0, "lr": 0.1, "bad": float("nan")})
    service.record_metrics(session, first.id, 4, {"loss": 2.0})
    assert (first.progress, first.eta_seconds, first.heartbeat_at is not None) == (0.5, 12.5, True)
    assert service.run_metrics(session, first.id) == {"loss": [(2, 3.0), (4, 2.0)], "lr": [(2, 0.1)]}
    assert service.run_metrics(session, first.id, ["lr"]) == {"lr": [(2, 0.1)]}
    assert service.latest_metrics(session, first.id) == {"loss": 2.0, "lr": 0.1}
    assert [r.id for r in service.list_runs(session)] == [second.id, first.id]
    assert [r.id for r in service.list_runs(session, limit=1, offset=1)] == [first.id]
    assert service.list_runs(session, status="running") == []


def test_cancel_rules(session: Session, registered: tuple[list[str], str]) -> None:
    names, _ = registered
    run = service.create_run(session, dataset_names_or_version_ids=names[:2], config=tiny_config())
    cancelled = service.cancel_run(session, run.id)  # never launched: cancelled at once
    assert (cancelled.status, cancelled.cancel_requested, cancelled.finished_at is not None) == (
        "cancelled",
        True,
        True,
    )
    with pytest.raises(ConflictError, match="already cancelled"):
        service.cancel_run(session, run.id)
    with pytest.raises(ConflictError, match="only queued runs"):
        service.start_run(session, service.get_run(session, run.id))
    with pytest.raises(NotFoundError):
        service.cancel_run(session, 987654)


def test_ray_jobs_payload_runs_the_entrypoint_with_the_same_database_and_store(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url="postgresql://db/ff",
        store_url="s3://bucket/ff",
        s3_endpoint_url="http://minio:9000",
        ray_address="http://head:8265",
        launcher="ray",
    )
    payload = job_submission_payload(Run(id=7), settings)
    assert payload["entrypoint"] == "python -m facefleet.workers.train --run 7"
    assert payload["submission_id"].startswith("facefleet-run-7-")
    assert payload["runtime_env"]["env_vars"] == {
        "FACEFLEET_DATABASE_URL": "postgresql://db/ff",
        "FACEFLEET_STORE_URL": "s3://bucket/ff",
        "FACEFLEET_DATA_DIR": str(tmp_path.resolve()),
        "FACEFLEET_S3_ENDPOINT_URL": "http://minio:9000",
    }
    assert isinstance(get_launcher("ray", settings), RayJobsLauncher)
    with pytest.raises(InvalidInputError, match="FACEFLEET_RAY_ADDRESS"):
        RayJobsLauncher(Settings(data_dir=tmp_path))


def test_kuberay_launcher_submits_a_rayjob_for_the_run(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, launcher="kuberay", kuberay_namespace="train")
    manifest = KubeRayLauncher(settings).manifest(Run(id=12))
    assert manifest["kind"] == "RayJob" and manifest["metadata"]["namespace"] == "train"
    assert manifest["spec"]["entrypoint"] == "python -m facefleet.workers.train --run 12"


def test_a_run_whose_worker_vanished_is_marked_failed(
    session: Session, registered: tuple[list[str], str], tmp_path: Path
) -> None:
    from facefleet.platform.runs.launchers import LocalLauncher

    names, _ = registered
    run = service.create_run(session, dataset_names_or_version_ids=names[:2], config=tiny_config())
    run.status, run.launcher_job_id = "running", "999999999"  # no such pid
    service.reconcile_run(session, run.id, launcher=LocalLauncher())
    assert run.status == "failed" and "exited without recording" in (run.error or "")
