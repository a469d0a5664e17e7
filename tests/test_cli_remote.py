"""The admin commands in remote mode (`--server`): datasets, runs, models, devices against a live API."""

from __future__ import annotations

import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result
from PIL import Image
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from facefleet.api.app import create_app
from facefleet.cli import app
from facefleet.platform.auth.service import create_api_key
from facefleet.platform.db.models import AuditEvent
from facefleet.platform.models import service as registry
from facefleet.platform.runs import lifecycle
from facefleet.platform.runs import service as runs
from facefleet.platform.settings import get_settings
from facefleet.platform.store import ObjectStore
from facefleet.terminal.demo import serve_in_background
from tests.platform.models.test_model_registry import _card
from tests.workers.train_helpers import register_tiny_datasets

runner = CliRunner()
RUN_CONFIG = ["--set", "backbone=tiny", "--set", "input_size=32", "--set", "steps=5"]
RUN_CONFIG += ["--set", "batch_size=16", "--set", "biometric.enabled=false"]


@dataclass
class Server:
    url: str
    engine: Engine
    store: ObjectStore
    admin: str
    viewer: str


@pytest.fixture
def server(
    sqlite_engine: Engine, local_store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Server]:
    """The real app on loopback; the CLI's own (local) database and store are elsewhere and empty, so
    anything the commands find came through the API."""
    with Session(sqlite_engine) as session:
        _, admin = create_api_key(session, name="ops", role="admin")
        _, viewer = create_api_key(session, name="dash", role="viewer")
        session.commit()
    app_under_test = create_app(get_settings(), engine=sqlite_engine, store=local_store)
    monkeypatch.setenv("FACEFLEET_DATABASE_URL", f"sqlite:///{tmp_path / 'cli-local.db'}")
    monkeypatch.setenv("FACEFLEET_STORE_URL", (tmp_path / "cli-local-store").as_uri())
    monkeypatch.setenv("COLUMNS", "200")
    with serve_in_background(app_under_test) as url:
        yield Server(url, sqlite_engine, local_store, admin, viewer)


def cli(monkeypatch: pytest.MonkeyPatch, args: list[str], key: str | None) -> Result:
    """Run `facefleet ARGS` with FACEFLEET_API_KEY set to ``key`` (or unset)."""
    if key is None:
        monkeypatch.delenv("FACEFLEET_API_KEY", raising=False)
    else:
        monkeypatch.setenv("FACEFLEET_API_KEY", key)
    get_settings.cache_clear()
    return runner.invoke(app, args)


def assert_clean_failure(result: Result, *fragments: str) -> None:
    """Exit code 1, the message on one line, and no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, result.output
    for fragment in fragments:
        assert fragment in error_lines[0], result.output


def make_image_folder(root: Path, identities: int = 3, images: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for identity in range(identities):
        folder = root / f"person_{identity}"
        folder.mkdir(parents=True)
        for index in range(images):
            pixels = rng.integers(0, 255, size=(48, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{index}.jpg")
    return root


def test_datasets_register_list_show_remotely(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_image_folder(tmp_path / "faces")
    register = ["datasets", "register", str(folder), "--name", "faces", "--tag", "lab", "--min-images", "2"]
    remote = cli(monkeypatch, [*register, "--server", server.url], server.admin)
    assert remote.exit_code == 0, remote.output
    assert "faces@1 ready: 3 identities, 9 images" in remote.output
    # The same folder registered locally reads the same: both modes render the same schema.
    local = cli(monkeypatch, register, None)
    assert local.exit_code == 0 and local.output == remote.output

    archive = tmp_path / "faces-archive.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*.jpg")):
            zf.write(path, path.relative_to(folder).as_posix())
    as_archive = cli(
        monkeypatch,
        ["datasets", "register", str(archive), "--name", "zipped", "--server", server.url],
        server.admin,
    )
    assert as_archive.exit_code == 0 and "zipped@1 ready: 3 identities, 9 images" in as_archive.output

    monkeypatch.setenv("FACEFLEET_SERVER_URL", server.url)  # the environment selects remote mode too
    listed = cli(monkeypatch, ["datasets", "list"], server.viewer)
    assert listed.exit_code == 0 and "2 datasets" in listed.output and "zipped" in listed.output
    assert "faces" in listed.output and "lab" in listed.output
    shown = cli(monkeypatch, ["datasets", "show", "faces"], server.viewer)
    assert shown.exit_code == 0, shown.output
    assert "faces@1" in shown.output and "3 / 9 / 0" in shown.output and "48x48: 9" in shown.output
    as_json = cli(monkeypatch, ["datasets", "show", "faces@1", "--json"], server.viewer)
    assert as_json.exit_code == 0 and '"image_count": 9' in as_json.output
    assert_clean_failure(cli(monkeypatch, ["datasets", "show", "nope"], server.viewer), "no dataset named")
    assert_clean_failure(cli(monkeypatch, ["datasets", "show", "faces@7"], server.viewer), "has no version 7")
    with Session(server.engine) as session:  # the server did the work, on behalf of the admin key
        actors = set(session.query(AuditEvent.actor).filter(AuditEvent.action == "datasets.register"))
    assert {actor for (actor,) in actors} and all("ops" in actor for (actor,) in actors)


def test_register_refusals_are_one_clean_line(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_image_folder(tmp_path / "faces", identities=2, images=2)
    args = ["datasets", "register", str(folder), "--name", "faces", "--server", server.url]
    assert_clean_failure(cli(monkeypatch, args, None), "FACEFLEET_API_KEY")
    assert_clean_failure(cli(monkeypatch, args, "ffk_not-a-real-key"), "API key")
    assert_clean_failure(cli(monkeypatch, args, server.viewer), "read-only", "admin key")
    missing = ["datasets", "register", str(tmp_path / "absent"), "--name", "x", "--server", server.url]
    assert_clean_failure(cli(monkeypatch, missing, server.admin), "does not exist", "field: source")
    bad_name = ["datasets", "register", str(folder), "--name", "-bad", "--server", server.url]
    assert_clean_failure(cli(monkeypatch, bad_name, server.admin), "name")
    (tmp_path / "empty").mkdir()
    empty = ["datasets", "register", str(tmp_path / "empty"), "--name", "e", "--server", server.url]
    assert_clean_failure(cli(monkeypatch, empty, server.admin), "no files")
    unreachable = ["datasets", "list", "--server", "http://127.0.0.1:9"]
    assert_clean_failure(cli(monkeypatch, unreachable, server.admin), "cannot reach")
    with Session(server.engine) as session:
        assert session.query(AuditEvent).filter(AuditEvent.action == "datasets.register").count() == 0


def _simulate_worker(engine: Engine, run_id: int) -> None:
    """What a training worker writes, without training: progress, a loss, then success."""
    time.sleep(0.3)
    with Session(engine) as session:
        run = runs.get_run(session, run_id)
        run.status, run.stage = "running", "training"
        lifecycle.report_progress(session, run_id, step=3, total_steps=5)
        runs.record_metrics(session, run_id, 3, {"loss": 1.25})
        session.commit()
    time.sleep(0.3)
    with Session(engine) as session:
        lifecycle.report_progress(session, run_id, step=5, total_steps=5)
        runs.mark_finished(session, runs.get_run(session, run_id), "succeeded")
        session.commit()


def test_runs_create_list_show_watch_cancel_remotely(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Session(server.engine) as session:
        names, verif = register_tiny_datasets(session, server.store, tmp_path / "synth")
        session.commit()
    remote = ["--server", server.url]
    create = ["runs", "create", "--datasets", ",".join(names), "--verification", verif, *RUN_CONFIG]
    created = cli(monkeypatch, [*create, "--set", "head.s=30", "--no-start", *remote], server.admin)
    assert created.exit_code == 0 and "run 1 queued" in created.output, created.output
    with Session(server.engine) as session:
        run = runs.get_run(session, 1)
        assert run.status == "queued" and run.config["head"]["s"] == 30 and run.created_by.endswith(":ops")

    shown = cli(monkeypatch, ["runs", "show", "1", *remote], server.viewer)
    assert shown.exit_code == 0 and "run 1 queued" in shown.output and names[1] in shown.output
    listed = cli(monkeypatch, ["runs", "list", "--status", "queued", *remote], server.viewer)
    assert listed.exit_code == 0 and "queued" in listed.output and names[0] in listed.output
    bad = cli(monkeypatch, [*create, "--set", "backbone=nope", "--no-start", *remote], server.admin)
    assert_clean_failure(bad, "unknown backbone 'nope'", "config.backbone")
    assert_clean_failure(cli(monkeypatch, ["runs", "cancel", "1", *remote], server.viewer), "read-only")
    cancelled = cli(monkeypatch, ["runs", "cancel", "1", *remote], server.admin)
    assert cancelled.exit_code == 0 and "run 1: cancelled" in cancelled.output
    again = cli(monkeypatch, ["runs", "cancel", "1", *remote], server.admin)
    assert_clean_failure(again, "already cancelled")
    assert_clean_failure(cli(monkeypatch, ["runs", "show", "42", *remote], server.viewer), "run 42")

    second = cli(monkeypatch, [*create, "--no-start", *remote], server.admin)
    assert second.exit_code == 0 and "run 2 queued" in second.output
    worker = threading.Thread(target=_simulate_worker, args=(server.engine, 2))
    worker.start()
    watched = cli(monkeypatch, ["runs", "watch", "2", "--interval", "0.1", *remote], server.viewer)
    worker.join()
    assert watched.exit_code == 0, watched.output
    assert "run 2 succeeded" in watched.output and "5/5" in watched.output
    shown = cli(monkeypatch, ["runs", "show", "2", *remote], server.viewer)
    assert "succeeded" in shown.output and "1.25" in shown.output
    finished = cli(monkeypatch, ["runs", "watch", "1", *remote], server.viewer)
    assert finished.exit_code == 1 and "run 1 cancelled" in finished.output


def test_models_list_show_promote_remotely(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Session(server.engine) as session:
        for _ in range(2):
            registry.register_model_version(
                session, server.store, name="faces", run_id=None, artifacts_dir=tmp_path, card=_card(tmp_path)
            )
        session.commit()
    remote = ["--server", server.url]
    denied = cli(monkeypatch, ["models", "promote", "faces", "1", *remote], server.viewer)
    assert_clean_failure(denied, "read-only")
    promoted = cli(monkeypatch, ["models", "promote", "faces", "1", *remote], server.admin)
    assert promoted.exit_code == 0 and "faces: production -> v1" in promoted.output
    listed = cli(monkeypatch, ["models", "list", *remote], server.viewer)
    assert listed.exit_code == 0 and "production=v1" in listed.output and "candidate=v2" in listed.output
    versions = cli(monkeypatch, ["models", "list", "faces", *remote], server.viewer)
    assert versions.exit_code == 0 and "production" in versions.output and "candidate" in versions.output
    shown = cli(monkeypatch, ["models", "show", "faces", "production", *remote], server.viewer)
    assert shown.exit_code == 0 and "faces v1" in shown.output and "model.onnx" in shown.output
    missing = cli(monkeypatch, ["models", "show", "faces", "7", *remote], server.viewer)
    assert_clean_failure(missing, "no version or alias")
    assert_clean_failure(cli(monkeypatch, ["models", "list", "nope", *remote], server.viewer), "nope")


def test_devices_register_list_disable_remotely(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    remote = ["--server", server.url]
    denied = cli(monkeypatch, ["devices", "register", "kiosk", "--group", "front", *remote], server.viewer)
    assert_clean_failure(denied, "read-only", "admin key")
    invalid = cli(monkeypatch, ["devices", "register", "bad name", "--group", "front", *remote], server.admin)
    assert_clean_failure(invalid, "name")
    registered = cli(monkeypatch, ["devices", "register", "kiosk", "--group", "front", *remote], server.admin)
    assert registered.exit_code == 0, registered.output
    assert "registered device 1 (kiosk) in group front" in registered.output
    assert registered.output.strip().splitlines()[-1].strip()  # the one-time token, on its own line
    assert_clean_failure(
        cli(monkeypatch, ["devices", "list", *remote], server.viewer), "read-only", "admin key"
    )  # README: devices are admin only, reads included
    listed = cli(monkeypatch, ["devices", "list", "--group", "front", *remote], server.admin)
    assert listed.exit_code == 0 and "kiosk" in listed.output
    disabled = cli(monkeypatch, ["devices", "disable", "1", *remote], server.admin)
    assert disabled.exit_code == 0 and "device 1 disabled" in disabled.output
    listed = cli(monkeypatch, ["devices", "list", *remote], server.admin)
    assert "disabled" in listed.output
    assert_clean_failure(cli(monkeypatch, ["devices", "disable", "9", *remote], server.admin), "9")
