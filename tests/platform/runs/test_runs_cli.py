"""`facefleet runs` and `facefleet models` commands against a real (SQLite) database and local store."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine
from typer.testing import CliRunner

from facefleet.commands import models as models_cli
from facefleet.commands import runs as runs_cli
from facefleet.platform.db.session import session_scope
from facefleet.platform.models import service as registry
from facefleet.platform.runs import service
from facefleet.platform.runs.schemas import apply_overrides, flatten_config
from facefleet.platform.store import ObjectStore
from tests.platform.models.test_model_registry import _card
from tests.workers.train_helpers import register_tiny_datasets

runner = CliRunner()


def test_overrides_set_nested_fields() -> None:
    base = {"head": {"s": 64.0}, "steps": 10}
    result = apply_overrides(base, ["head.s=32", "reversal.enabled=false", "steps=20", "model_name=x"])
    assert result == {"head": {"s": 32}, "reversal": {"enabled": False}, "steps": 20, "model_name": "x"}
    assert base == {"head": {"s": 64.0}, "steps": 10}


def test_flattened_config_gives_back_the_overrides_that_rebuild_it() -> None:
    config = {"head": {"s": 16.0, "kind": "arcface"}, "augment": {"shift": 0.05}, "steps": 20}
    flat = flatten_config(config)
    assert flat == {"head.s": 16.0, "head.kind": "arcface", "augment.shift": 0.05, "steps": 20}
    assert apply_overrides({}, [f"{key}={value}" for key, value in flat.items()]) == config


def test_runs_create_show_list_cancel(
    sqlite_engine: Engine, local_store: ObjectStore, tmp_path: Path
) -> None:
    with session_scope() as session:
        names, verif = register_tiny_datasets(session, local_store, tmp_path / "synth")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(
        "backbone: tiny\ninput_size: 32\nsteps: 5\nbatch_size: 16\nbiometric:\n  enabled: false\n"
    )
    created = runner.invoke(
        runs_cli.app,
        [
            "create",
            "--datasets",
            ",".join(names),
            "--verification",
            verif,
            "--config",
            str(config_file),
            "--set",
            "head.s=30",
            "--no-start",
        ],
    )
    assert created.exit_code == 0, created.output
    with session_scope() as session:
        run = service.list_runs(session)[0]
        assert run.config["head"]["s"] == 30 and run.config["steps"] == 5 and run.status == "queued"
    shown = runner.invoke(runs_cli.app, ["show", str(run.id)])
    assert shown.exit_code == 0 and "queued" in shown.output and names[1] in shown.output
    listed = runner.invoke(runs_cli.app, ["list"])
    assert listed.exit_code == 0 and str(run.id) in listed.output
    bad = runner.invoke(
        runs_cli.app, ["create", "--datasets", names[0], "--set", "backbone=nope", "--no-start"]
    )
    assert bad.exit_code == 1 and "unknown backbone 'nope'" in bad.output
    cancelled = runner.invoke(runs_cli.app, ["cancel", str(run.id)])
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.output
    again = runner.invoke(runs_cli.app, ["cancel", str(run.id)])
    assert again.exit_code == 1 and "already cancelled" in again.output


def test_models_list_show_promote(sqlite_engine: Engine, local_store: ObjectStore, tmp_path: Path) -> None:
    with session_scope() as session:
        for _ in range(2):
            registry.register_model_version(
                session, local_store, name="faces", run_id=None, artifacts_dir=tmp_path, card=_card(tmp_path)
            )
    promoted = runner.invoke(models_cli.app, ["promote", "faces", "1"])
    assert promoted.exit_code == 0 and "production -> v1" in promoted.output
    listed = runner.invoke(models_cli.app, ["list"])
    assert "candidate=v2" in listed.output and "production=v1" in listed.output
    shown = runner.invoke(models_cli.app, ["show", "faces", "production"])
    assert shown.exit_code == 0 and "faces v1" in shown.output and "model.onnx" in shown.output
    missing = runner.invoke(models_cli.app, ["show", "faces", "7"])
    assert missing.exit_code == 1 and "no version or alias" in missing.output
