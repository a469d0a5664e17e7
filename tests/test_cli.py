"""The `facefleet` command: help, version, config, db upgrade."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from facefleet import __version__
from facefleet.cli import app

runner = CliRunner()


def test_help_lists_the_command_groups() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for group in ("db", "datasets", "runs", "models", "config", "version"):
        assert group in result.output


def test_version() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_config_masks_secrets(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FACEFLEET_DATABASE_URL", "postgresql+psycopg://u:hunter2@db/ff")
    monkeypatch.setenv("COLUMNS", "200")
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 0, result.output
    assert "FACEFLEET_DATABASE_URL" in result.output
    assert "hunter2" not in result.output


def test_db_upgrade_creates_the_sqlite_file(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "x.db"
    monkeypatch.setenv("FACEFLEET_DATABASE_URL", f"sqlite:///{db}")
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert db.exists()
