"""A ``kind: distill`` run is checked and pinned before it is queued: teacher, student, inspection sets.

Through the service, the API (422 naming the field) and the CLI (one-line error, exit 1)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from typer.testing import CliRunner

from facefleet.commands import runs as runs_cli
from facefleet.platform.db.session import session_scope
from facefleet.platform.errors import InvalidInputError
from facefleet.platform.models import service as registry
from facefleet.platform.runs import service
from facefleet.platform.runs.schemas import TrainingConfig
from facefleet.platform.store import ObjectStore
from tests.api.conftest import Api, _client
from tests.terminal.model_factory import register_test_model
from tests.workers.distill_helpers import (
    attempts_from_folder,
    register_inspection_set,
    register_landmarks_model,
)
from tests.workers.train_helpers import register_tiny_datasets

runner = CliRunner()


@dataclass
class World:
    train: list[str]
    verification: str
    teacher_threshold: float


@pytest.fixture
def world(sqlite_engine: Engine, local_store: ObjectStore, tmp_path: Path) -> World:
    with session_scope() as session:
        names, verif = register_tiny_datasets(session, local_store, tmp_path / "synth", num_datasets=1)
        register_test_model(session, local_store, tmp_path / "teacher", name="teacher", threshold=0.42)
        register_test_model(session, local_store, tmp_path / "teacher2", name="teacher", seed=1)
        registry.set_alias(session, "teacher", "production", 1)
        register_landmarks_model(session, local_store, tmp_path / "lm", "lm")
        register_inspection_set(
            session, local_store, "field", attempts_from_folder(tmp_path / "synth" / "synth_0", 6)
        )
    return World(names, verif, 0.42)


def config(**distill: Any) -> dict[str, Any]:
    return {
        "kind": "distill",
        "backbone": "tiny",
        "input_size": 32,
        "steps": 4,
        "batch_size": 8,
        "scaling": {"num_workers": 0},
        "distill": {"teacher": "teacher@production", **distill},
    }


def create(world: World, cfg: dict[str, Any]) -> int:
    with session_scope() as session:
        return service.create_run(
            session,
            dataset_names_or_version_ids=world.train,
            verification_sets=[world.verification],
            config=cfg,
        ).id


def test_valid_distill_run_is_pinned(world: World) -> None:
    run_id = create(world, config(inspection_sets=["field"]))
    with session_scope() as session:
        run = service.get_run(session, run_id)
        cfg = TrainingConfig.model_validate(run.config)
        roles = [(row.role, row.num_classes) for row in run.datasets]
    assert cfg.distill.teacher == "teacher@1"  # the alias resolved and pinned
    ref = cfg.distill.resolved_teacher
    assert ref is not None and (ref.name, ref.version, ref.backbone) == ("teacher", 1, "tiny")
    assert ref.threshold == pytest.approx(world.teacher_threshold) and ref.input_size == 32
    assert cfg.embedding_dim == ref.embedding_dim == 32  # the student takes the teacher's size by default
    assert cfg.distill.inspection_sets == ["field:1"]
    assert [role for role, _ in roles] == ["train", "verification", "inspection"]
    # one training dataset is fine: no dataset classifier in a distill run
    assert run.status == "queued"


def test_version_number_and_other_student_sizes(world: World) -> None:
    run_id = create(world, {**config(), "distill": {"teacher": "teacher@2"}, "embedding_dim": 8})
    with session_scope() as session:
        cfg = TrainingConfig.model_validate(service.get_run(session, run_id).config)
    assert cfg.distill.teacher == "teacher@2" and cfg.embedding_dim == 8


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (config(teacher="nobody@1"), "no version or alias"),
        (config(teacher="teacher@9"), "has no version or alias '9'"),
        (config(teacher="teacher"), "name@version"),
        (config(teacher="lm@1"), "is a landmarks model"),
        (config(inspection_sets=["verif"]), "not an inspection set"),
        (config(inspection_sets=["synth_0"]), "not an inspection set"),
        (config(inspection_sets=["missing"]), "no ready dataset version"),
        (config(inspection_sets=["field", "field:1"]), "listed twice"),
        ({**config(), "backbone": "resnet9000"}, "unknown student backbone"),
        ({**config(), "biometric": {"enabled": True}}, "trains no identity head"),
        ({**config(), "distill": {}}, "needs distill.teacher"),
        ({"distill": {"teacher": "teacher@1"}}, "for kind: distill runs only"),
    ],
)
def test_bad_distill_input_is_refused_before_queueing(
    world: World, cfg: dict[str, Any], message: str
) -> None:
    with session_scope() as session:
        before = len(service.list_runs(session))  # the teachers' export runs
        with pytest.raises(InvalidInputError, match=message):
            service.create_run(
                session,
                dataset_names_or_version_ids=world.train,
                verification_sets=[world.verification],
                config=cfg,
            )
        assert len(service.list_runs(session)) == before


@pytest.fixture
def distill_api(
    world: World, sqlite_engine: Engine, local_store: ObjectStore, tmp_path: Path
) -> Iterator[Api]:
    yield from _client(sqlite_engine, local_store, tmp_path)


@pytest.mark.parametrize(
    ("distill", "field", "message"),
    [
        ({"teacher": "nobody@production"}, "config.distill.teacher", "no version or alias"),
        ({"teacher": "lm@1"}, "config.distill.teacher", "is a landmarks model"),
        ({"inspection_sets": ["verif"]}, "config.distill.inspection_sets", "not an inspection set"),
        ({"calibration": "median"}, "config.distill.calibration", "batch"),
    ],
)
def test_api_answers_422_naming_the_field(
    distill_api: Api, world: World, distill: dict[str, Any], field: str, message: str
) -> None:
    client: TestClient = distill_api.client
    body = {"datasets": world.train, "config": config(**distill), "start": False}
    response = client.post("/v1/runs", headers=distill_api.admin, json=body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert message in response.text and field in response.text, problem
    assert "Traceback" not in response.text
    listed = client.get("/v1/runs", headers=distill_api.admin).json()["items"]
    assert [run["config"].get("kind") for run in listed if run["config"].get("kind") == "distill"] == []
    ok = client.post(
        "/v1/runs", headers=distill_api.admin, json={**body, "config": config(inspection_sets=["field"])}
    )
    assert ok.status_code == 201, ok.text
    assert [d["role"] for d in ok.json()["datasets"]] == ["train", "inspection"]


def test_cli_prints_one_clear_error(world: World) -> None:
    common = ["create", "--datasets", world.train[0], "--no-start", "--set", "kind=distill"]
    common += ["--set", "backbone=tiny", "--set", "input_size=32", "--set", "scaling.num_workers=0"]
    result = runner.invoke(runs_cli.app, [*common, "--set", "distill.teacher=lm@1"])
    assert result.exit_code == 1
    assert "error:" in result.output and "is a landmarks model" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(runs_cli.app, [*common, "--set", "distill.teacher=teacher@1"])
    assert result.exit_code == 0, result.output
