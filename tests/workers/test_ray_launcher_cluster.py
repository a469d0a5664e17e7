"""The `ray` launcher against a real two-node Ray cluster (tests/fixtures/ray_cluster.py), through the API.

One cluster and one set of tiny datasets for the module: a run trains end to end (its two training workers on
the two nodes), a second run is cancelled through the launcher, a job that cannot import facefleet fails with
Ray's account of why on the run, and the pre-flight check refuses such a cluster before a run exists.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from facefleet import __version__
from facefleet.api.app import create_app
from facefleet.cli import app as cli_app
from facefleet.platform.auth import create_api_key
from facefleet.platform.db import migrate
from facefleet.platform.db.models import Run
from facefleet.platform.db.session import make_engine, session_scope
from facefleet.platform.errors import InvalidInputError
from facefleet.platform.models import service as registry
from facefleet.platform.runs import ray_preflight
from facefleet.platform.runs.ray_jobs import RayJobsClient
from facefleet.platform.settings import get_settings
from facefleet.platform.store import get_store
from tests.fixtures.ray_cluster import RayCluster
from tests.workers.train_helpers import register_tiny_datasets, tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
FINISHED = ("succeeded", "failed", "cancelled")


@dataclass
class Prepared:
    env: dict[str, str]
    engine: Engine
    datasets: list[str]
    verification: str
    admin: dict[str, str]


@dataclass
class Api:
    client: TestClient
    prepared: Prepared
    cluster: RayCluster

    def create(self, **config: Any) -> httpx.Response:
        body = {
            "datasets": self.prepared.datasets,
            "verification_sets": [self.prepared.verification],
            "config": tiny_config(**config),
        }
        return self.client.post("/v1/runs", json=body, headers=self.prepared.admin)

    def run(self, run_id: int) -> dict[str, Any]:
        response = self.client.get(f"/v1/runs/{run_id}", headers=self.prepared.admin)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait(self, run_id: int, states: tuple[str, ...], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            if run["status"] in states:
                return run
            assert run["status"] not in FINISHED, run
            if time.monotonic() > deadline:
                job = self.cluster.job(run["launcher_job_id"]) if run["launcher_job_id"] else None
                raise AssertionError(f"run {run_id} still {run['status']} after {timeout:.0f} s: {job}")
            time.sleep(1.0)


@pytest.fixture(scope="module")
def prepared(ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prepared]:
    root = tmp_path_factory.mktemp("ray-launcher")
    env = {
        "FACEFLEET_DATA_DIR": str(root / "data"),
        "FACEFLEET_DATABASE_URL": f"sqlite:///{root / 'ff.db'}",
        "FACEFLEET_STORE_URL": (root / "store").as_uri(),
        "FACEFLEET_LAUNCHER": "ray",
        "FACEFLEET_RAY_ADDRESS": ray_cluster.dashboard_url,
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        get_settings.cache_clear()
        migrate.upgrade(env["FACEFLEET_DATABASE_URL"])
        with session_scope() as session:
            names, verification = register_tiny_datasets(session, get_store(), root / "synth")
            _, token = create_api_key(session, name="root", role="admin")
        get_settings.cache_clear()
    ray_preflight.clear_cache()  # the first run's creation probes this cluster for real
    engine = make_engine(env["FACEFLEET_DATABASE_URL"])
    yield Prepared(env, engine, names, verification, {"Authorization": f"Bearer {token}"})
    engine.dispose()


@pytest.fixture
def api(prepared: Prepared, ray_cluster: RayCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    """The real app (no stand-in starter: runs go to the cluster) on the module's database."""
    for name, value in prepared.env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    app = create_app(get_settings(), engine=prepared.engine, store=get_store())
    with TestClient(app) as client:
        yield Api(client, prepared, ray_cluster)


@pytest.fixture
def python_without_facefleet(tmp_path: Path) -> dict[str, Any]:
    """A runtime_env whose `python` is the venv's base interpreter, which has no facefleet: the situation
    of a head started from a venv that was not activated."""
    base = Path(getattr(sys, "_base_executable", "") or "/usr/bin/python3").resolve()
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    probe = subprocess.run(
        [str(base), "-c", "import facefleet"], env=clean, cwd=tmp_path, capture_output=True
    )
    if probe.returncode == 0:
        pytest.skip(f"{base} can import facefleet; no interpreter without it to point the cluster at")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(base)
    return {"env_vars": {"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONPATH": ""}}


def _train_worker_nodes(cluster: RayCluster, ray_job_id: str) -> set[str]:
    response = httpx.get(
        f"{cluster.dashboard_url}/api/v0/actors", params={"limit": 1000, "detail": "true"}, timeout=30
    )
    response.raise_for_status()
    actors = response.json()["data"]["result"]["result"]
    return {
        actor["node_id"]
        for actor in actors
        if actor.get("job_id") == ray_job_id and "TrainWorker" in actor.get("class_name", "")
    }


def test_a_run_trains_on_two_nodes_through_the_ray_launcher(api: Api) -> None:
    created = api.create(scaling={"num_workers": 2}, steps=4, checkpoint_interval=4, metrics_interval=2)
    assert created.status_code == 201, created.text
    run = created.json()
    assert run["launcher"] == "ray" and run["launcher_job_id"].startswith(f"facefleet-run-{run['id']}-")
    finished = api.wait(run["id"], FINISHED, timeout=900)
    # The driver records the end of the run, then shuts its Ray client down and exits.
    job = api.cluster.wait_for_job(run["launcher_job_id"], 180, ("SUCCEEDED", "FAILED", "STOPPED"))
    assert (finished["status"], finished["error"]) == ("succeeded", None), job
    assert job["status"] == "SUCCEEDED"
    assert (finished["step"], finished["total_steps"], finished["progress"]) == (4, 4, 1.0)
    metrics = api.client.get(f"/v1/runs/{run['id']}/metrics", headers=api.prepared.admin).json()["series"]
    assert [point["step"] for point in metrics["loss"]] == [2, 4]
    assert "eval/verif/cosine/accuracy" in metrics
    with Session(api.prepared.engine) as session:
        model = registry.get_model_version(session, "facefleet", "candidate")
        assert model.run_id == run["id"]
    assert finished["summary"]["model"] == {"name": "facefleet", "version": model.version}
    # One CPU per node and one per training worker: the two workers ran on the two nodes.
    assert len(_train_worker_nodes(api.cluster, job["job_id"])) == 2


def test_a_run_is_cancelled_through_the_ray_launcher(api: Api) -> None:
    # Ray Train's local mode (the training in the job's driver) keeps this one light.
    created = api.create(scaling={"num_workers": 0}, steps=400, checkpoint_interval=400)
    assert created.status_code == 201, created.text
    run = created.json()
    api.wait(run["id"], ("starting", "running"), timeout=300)  # the job's driver has the run
    cancelled = api.client.post(
        f"/v1/runs/{run['id']}:cancel", json={"force": True}, headers=api.prepared.admin
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    job = api.cluster.wait_for_job(run["launcher_job_id"], 120, ("STOPPED", "FAILED", "SUCCEEDED"))
    assert job["status"] == "STOPPED", job
    assert api.run(run["id"])["status"] == "cancelled"


def test_a_job_that_cannot_import_facefleet_fails_the_run_with_rays_account(
    api: Api, python_without_facefleet: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACEFLEET_RAY_RUNTIME_ENV", json.dumps(python_without_facefleet))
    monkeypatch.setenv("FACEFLEET_RAY_PREFLIGHT", "false")  # the failure the check exists to prevent
    get_settings.cache_clear()
    created = api.create()
    assert created.status_code == 201, created.text
    run = created.json()
    api.cluster.wait_for_job(run["launcher_job_id"], 120, ("FAILED", "SUCCEEDED", "STOPPED"))
    failed = api.run(run["id"])  # reading the run notices the job's end
    assert failed["status"] == "failed"
    error = failed["error"]
    assert error.startswith("the worker exited without recording the end of the run: ")
    job_id = run["launcher_job_id"]
    assert f"Ray job {job_id} FAILED: Job entrypoint command failed with exit code 1\n" in error
    assert "No module named 'facefleet'" in error  # from the job's log tail
    assert len(error) <= 4200
    shown = CliRunner().invoke(cli_app, ["runs", "show", str(run["id"])])
    output = " ".join(shown.output.split())  # rich wraps long lines
    assert shown.exit_code == 0, output
    assert f"run {run['id']} failed" in output and "No module named 'facefleet'" in output


def test_a_job_whose_runtime_env_cannot_be_set_up_says_so_on_the_run(
    api: Api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing_code = tmp_path / "no-such-module-dir"
    monkeypatch.setenv("FACEFLEET_RAY_RUNTIME_ENV", json.dumps({"py_modules": [str(missing_code)]}))
    monkeypatch.setenv("FACEFLEET_RAY_PREFLIGHT", "false")
    get_settings.cache_clear()
    created = api.create()
    assert created.status_code == 201, created.text
    run = created.json()
    job = api.cluster.wait_for_job(run["launcher_job_id"], 120, ("FAILED", "SUCCEEDED", "STOPPED"))
    assert job["status"] == "FAILED" and job["driver_exit_code"] is None  # no entrypoint ever ran
    failed = api.run(run["id"])
    assert failed["status"] == "failed"
    assert f"Ray job {run['launcher_job_id']} FAILED: " in failed["error"]
    assert str(missing_code) in failed["error"]


def test_the_preflight_refuses_a_cluster_without_facefleet(
    api: Api, python_without_facefleet: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FACEFLEET_RAY_RUNTIME_ENV", json.dumps(python_without_facefleet))
    get_settings.cache_clear()
    with Session(api.prepared.engine) as session:
        runs_before = session.scalar(select(func.count()).select_from(Run))
    refused = api.create()
    assert refused.status_code == 422, refused.text
    detail = refused.json()["detail"]
    assert f"the Ray cluster at {api.cluster.dashboard_url} cannot run facefleet {__version__}" in detail
    assert "on the head, where the job's entrypoint runs" in detail
    assert "fails to import facefleet: ModuleNotFoundError: No module named 'facefleet'" in detail
    assert f"Install facefleet=={__version__}" in detail and "FACEFLEET_RAY_RUNTIME_ENV" in detail
    with Session(api.prepared.engine) as session:
        assert session.scalar(select(func.count()).select_from(Run)) == runs_before  # nothing written
    # The CLI (local mode: it creates the run itself) refuses it the same way.
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_config()))
    cli = CliRunner().invoke(
        cli_app, ["runs", "create", "--datasets", ",".join(api.prepared.datasets), "--config", str(config)]
    )
    output = " ".join(cli.output.split())
    assert cli.exit_code == 1, output
    assert "fails to import facefleet" in output and f"Install facefleet=={__version__}" in output


def test_the_preflight_names_each_node_whose_facefleet_differs(ray_cluster: RayCluster) -> None:
    # The report of this cluster's probe (made for the first run's creation when this module runs in
    # order) held against another facefleet version: every node reported is compared.
    client = RayJobsClient(ray_cluster.dashboard_url)
    with pytest.raises(InvalidInputError) as refused:
        ray_preflight.check_cluster(client, None, expected="0.0.0.dev0")
    message = refused.value.message
    assert f"has facefleet {__version__}" in message and "not 0.0.0.dev0" in message
    assert message.count("(node ") == 2  # both nodes were asked, by a task pinned to each
    assert "Install facefleet==0.0.0.dev0" in message
