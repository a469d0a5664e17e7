"""`facefleet deployments` and `facefleet policies`: local mode on SQLite, remote mode, clean errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner, Result

from facefleet.api.app import create_app
from facefleet.cli import app
from facefleet.platform.auth.service import create_api_key
from facefleet.platform.db.models import AuditEvent, Deployment, DeviceDeployment, RetrainPolicy
from facefleet.platform.devices import service as devices
from facefleet.platform.settings import get_settings
from facefleet.platform.store import ObjectStore
from facefleet.terminal.demo import serve_in_background
from tests.terminal.model_factory import register_test_model

runner = CliRunner()


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # rich tables must not wrap the values the tests look for
    monkeypatch.delenv("FACEFLEET_SERVER_URL", raising=False)
    monkeypatch.delenv("FACEFLEET_API_KEY", raising=False)


def cli(*args: str) -> Result:
    get_settings.cache_clear()
    return runner.invoke(app, list(args))


def ok(*args: str) -> str:
    result = cli(*args)
    assert result.exit_code == 0, result.output
    return result.output


def assert_clean_failure(result: Result, *fragments: str) -> None:
    """Exit code 1, one `error:` line carrying every fragment, no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, result.output
    for fragment in fragments:
        assert fragment in error_lines[0], result.output


def _model_and_lobby(engine: Engine, store: ObjectStore, folder: Path, devices_in_lobby: int = 2) -> int:
    """A signed model version named `terminal` (alias candidate) and enrolled devices in group lobby."""
    with Session(engine) as session:
        version = register_test_model(session, store, folder)
        for index in range(devices_in_lobby):
            _device, token, _ = devices.register_device(session, name=f"door-{index}", group="lobby")
            devices.enroll(session, token)
        session.commit()
        return version.version


def _audit_actions(engine: Engine) -> list[tuple[str, str]]:
    with Session(engine) as session:
        rows = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
        return [(row.actor, row.action) for row in rows]


def test_policy_lifecycle_locally(sqlite_engine: Engine, local_store: ObjectStore, tmp_path: Path) -> None:
    config = tmp_path / "base.yaml"
    config.write_text("backbone: tiny\nsteps: 50\n")
    created = ok(
        "policies", "create", "--name", "nightly", "--trigger", "schedule,dataset_added",
        "--cron", "0 3 * * *", "--glob", "faces-*", "--verification", "lfw-mini",
        "--config", str(config), "--set", "steps=80", "--auto-promote",
        "--webhook", "https://hooks.example.com/ff", "--email", "ops@example.com",
    )  # fmt: skip
    assert "policy 1 (nightly) created; triggers: schedule, dataset_added" in created
    with Session(sqlite_engine) as session:
        stored = session.get(RetrainPolicy, 1)
        assert stored is not None and stored.next_cron_at is not None
        assert stored.base_config == {"backbone": "tiny", "steps": 80, "model_name": "facefleet"}
        assert stored.dataset_selector["glob"] == "faces-*" and stored.auto_promote
        assert stored.notify == {"webhooks": ["https://hooks.example.com/ff"], "emails": ["ops@example.com"]}

    listed = ok("policies", "list")
    assert "nightly" in listed and "0 3 * * *" in listed and "schedule, dataset_added" in listed
    shown = ok("policies", "show", "1")
    assert "lfw-mini" in shown and "faces-*" in shown and "'steps': 80" in shown

    updated = ok("policies", "update", "1", "--disable", "--set", "steps=120")
    assert "policy 1 (nightly) updated: base_config (training config) replaced, enabled -> false" in updated
    with Session(sqlite_engine) as session:
        stored = session.get(RetrainPolicy, 1)
        assert stored is not None and not stored.enabled and stored.base_config["steps"] == 120
        assert stored.base_config["backbone"] == "tiny"  # --set alone keeps the rest of the config
    assert "nightly" in ok("policies", "list", "--disabled")
    assert "nightly" not in ok("policies", "list", "--enabled")

    assert_clean_failure(cli("policies", "fire", "1"), "disabled")  # the service refuses; clean line
    ok("policies", "update", "1", "--enable")
    assert "policy 1 (nightly) fired" in ok("policies", "fire", "1")
    with Session(sqlite_engine) as session:
        stored = session.get(RetrainPolicy, 1)
        assert stored is not None and stored.pending_trigger == "manual"
        assert stored.pending_events[-1]["requested_by"] == "cli"

    assert "policy 1 deleted" in ok("policies", "delete", "1")
    assert_clean_failure(cli("policies", "show", "1"), "retrain policy 1 does not exist")
    assert _audit_actions(sqlite_engine) == [
        ("cli", "policies.create"),
        ("cli", "policies.update"),
        ("cli", "policies.update"),
        ("cli", "policies.fire"),
        ("cli", "policies.delete"),
    ]


def test_policy_input_errors_name_the_field(sqlite_engine: Engine, local_store: ObjectStore) -> None:
    assert_clean_failure(
        cli("policies", "create", "--name", "p", "--cron", "every night"), "cron", "not a cron expression"
    )
    assert_clean_failure(cli("policies", "create", "--name", "p", "--trigger", "hourly"), "triggers")
    assert_clean_failure(
        cli("policies", "create", "--name", "p", "--trigger", "metric_drop"), "metric_threshold"
    )
    ok("policies", "create", "--name", "p")
    assert_clean_failure(cli("policies", "create", "--name", "p"), "a policy named 'p' exists")
    assert_clean_failure(cli("policies", "update", "1"), "nothing to change")
    assert_clean_failure(cli("policies", "update", "1", "--cron", "61 * * * *"), "cron")
    assert [action for _actor, action in _audit_actions(sqlite_engine)] == ["policies.create"]


def test_deployment_create_list_show_locally(
    sqlite_engine: Engine, local_store: ObjectStore, tmp_path: Path
) -> None:
    number = _model_and_lobby(sqlite_engine, local_store, tmp_path / "model")
    created = ok(
        "deployments", "create", "--model", "terminal", "--version", str(number), "--group", "lobby",
        "--strategy", "canary", "--canary-percent", "50", "--max-failure-rate", "0.5",
    )  # fmt: skip
    assert f"deployment 1: terminal v{number} -> group lobby (canary, 2 devices, stage canary)" in created

    listed = ok("deployments", "list", "--group", "lobby")
    assert "canary 50%" in listed and "in_progress" in listed
    assert "lobby" not in ok("deployments", "list", "--status", "completed")
    assert "lobby" not in ok("deployments", "list", "--group", "garage")

    shown = ok("deployments", "show", "1")
    assert "in_progress" in shown and "door-0" in shown and "door-1" in shown
    assert "canary" in shown and "rest" in shown and "pending" in shown
    assert "2 devices (canary: 1 pending, rest: 1 pending)" in shown
    canaries = ok("deployments", "show", "1", "--phase", "canary")  # through the paged rows
    assert "2 devices" in canaries and canaries.count("door-") == 1
    assert "door-" not in ok("deployments", "show", "1", "--status", "installed")
    assert_clean_failure(cli("deployments", "show", "1", "--status", "done"), "--status must be one of")
    assert_clean_failure(cli("deployments", "show", "1", "--phase", "first"), "--phase must be one of")
    with Session(sqlite_engine) as session:
        rows = session.scalars(select(DeviceDeployment)).all()
        assert sorted(row.phase for row in rows) == ["canary", "rest"]
    assert _audit_actions(sqlite_engine) == [("cli", "deployments.create")]


def test_deployment_create_paced_locally(
    sqlite_engine: Engine, local_store: ObjectStore, tmp_path: Path
) -> None:
    number = _model_and_lobby(sqlite_engine, local_store, tmp_path / "model")
    base = ("deployments", "create", "--model", "terminal", "--version", str(number), "--group", "lobby")
    assert_clean_failure(cli(*base, "--release-per-minute", "0"), "release_per_minute")
    ok(*base, "--release-per-minute", "60")
    with Session(sqlite_engine) as session:
        deployment = session.scalars(select(Deployment)).one()
        assert deployment.release_per_minute == 60
        slots = session.scalars(select(DeviceDeployment.release_slot).order_by(DeviceDeployment.id)).all()
        assert slots == [0, 1]


def test_deployment_errors_are_one_clean_line(
    sqlite_engine: Engine, local_store: ObjectStore, tmp_path: Path
) -> None:
    assert_clean_failure(
        cli("deployments", "create", "--model", "nope", "--alias", "production", "--group", "lobby"),
        "model 'nope' has no version or alias 'production'",
    )
    assert_clean_failure(
        cli("deployments", "create", "--model", "nope", "--group", "lobby"), "--version N or --alias NAME"
    )
    assert_clean_failure(cli("deployments", "show", "7"), "no deployment with id 7")


def test_remote_mode_against_the_api(
    sqlite_engine: Engine,
    local_store: ObjectStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real app on loopback; the CLI's own local database is elsewhere, so all it shows came via HTTP."""
    number = _model_and_lobby(sqlite_engine, local_store, tmp_path / "model", devices_in_lobby=1)
    with Session(sqlite_engine) as session:
        _, admin = create_api_key(session, name="ops", role="admin")
        session.commit()
    served = create_app(get_settings(), engine=sqlite_engine, store=local_store)
    monkeypatch.setenv("FACEFLEET_DATABASE_URL", f"sqlite:///{tmp_path / 'cli-local.db'}")
    monkeypatch.setenv("FACEFLEET_STORE_URL", (tmp_path / "cli-local-store").as_uri())
    monkeypatch.setenv("FACEFLEET_API_KEY", admin)
    with serve_in_background(served) as url:
        created = ok("policies", "create", "--name", "weekly", "--cron", "0 4 * * 1", "--server", url)
        assert "policy 1 (weekly) created; triggers: schedule" in created
        assert "weekly" in ok("policies", "list", "--server", url)
        assert "0 4 * * 1" in ok("policies", "show", "1", "--server", url)
        assert "updated: debounce_seconds -> 5" in ok(
            "policies", "update", "1", "--debounce", "5", "--server", url
        )
        assert "fired" in ok("policies", "fire", "1", "--server", url)
        assert_clean_failure(cli("policies", "update", "1", "--cron", "bad cron", "--server", url), "cron")

        deployed = ok(
            "deployments", "create", "--model", "terminal", "--alias", "candidate",
            "--group", "lobby", "--server", url,
        )  # fmt: skip
        assert f"deployment 1: terminal v{number} -> group lobby (all, 1 devices" in deployed
        assert "door-0" in ok("deployments", "show", "1", "--server", url)
        assert "door-0" in ok("deployments", "show", "1", "--status", "pending", "--server", url)
        assert "door-0" not in ok("deployments", "show", "1", "--phase", "canary", "--server", url)
        assert "in_progress" in ok("deployments", "list", "--server", url)
        assert_clean_failure(
            cli(
                "deployments",
                "create",
                "--model",
                "nope",
                "--version",
                "1",
                "--group",
                "lobby",
                "--server",
                url,
            ),
            "nope",
        )
        assert "policy 1 deleted" in ok("policies", "delete", "1", "--server", url)
    actions = _audit_actions(sqlite_engine)
    assert ("ops", "deployments.create") in [(actor.split(":")[-1], action) for actor, action in actions]
    assert {action for _actor, action in actions} >= {"policies.create", "policies.fire", "policies.delete"}
