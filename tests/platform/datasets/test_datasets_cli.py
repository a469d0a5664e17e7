"""`facefleet datasets synth | register | list | show` end to end on SQLite and the local store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from facefleet.cli import app

runner = CliRunner()


@pytest.fixture
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from facefleet.platform.settings import get_settings

    monkeypatch.setenv("FACEFLEET_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("FACEFLEET_STORE_URL", (tmp_path / "store").as_uri())
    monkeypatch.setenv("COLUMNS", "200")
    get_settings.cache_clear()


def test_synth_register_list_show(embedded: None, tmp_path: Path) -> None:
    out = tmp_path / "synth"
    result = runner.invoke(
        app,
        [
            "datasets",
            "synth",
            "--out",
            str(out),
            "--datasets",
            "2",
            "--identities",
            "3",
            "--images",
            "3",
            "--verification-identities",
            "4",
            "--verification-pairs",
            "8",
            "--size",
            "48",
        ],
    )
    assert result.exit_code == 0, result.output
    train_dir = next(path for path in sorted(out.iterdir()) if path.is_dir() and path.name != "verification")
    result = runner.invoke(
        app, ["datasets", "register", str(train_dir), "--name", "synth-a", "--min-images", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "synth-a@1 ready: 3 identities, 9 images" in result.output
    result = runner.invoke(
        app,
        ["datasets", "register", str(out / "verification"), "--name", "synth-ver", "--kind", "verification"],
    )
    assert result.exit_code == 0, result.output
    assert "pairs" in result.output

    listing = runner.invoke(app, ["datasets", "list"])
    assert listing.exit_code == 0 and "synth-a" in listing.output and "synth-ver" in listing.output
    shown = runner.invoke(app, ["datasets", "show", "synth-a@1"])
    assert shown.exit_code == 0, shown.output
    assert "3 / 9 / 0" in shown.output and "48x48: 9" in shown.output


def test_register_errors_exit_nonzero_with_the_message(embedded: None, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["datasets", "register", str(tmp_path / "empty"), "--name", "e"])
    assert result.exit_code == 1 and "holds no files" in result.output
    shown = runner.invoke(app, ["datasets", "show", "e"])  # a refused registration leaves no dataset
    assert shown.exit_code == 1 and "no dataset named" in shown.output
    missing = runner.invoke(app, ["datasets", "show", "nope"])
    assert missing.exit_code == 1 and "no dataset named" in missing.output


def test_list_filters_on_every_kind(embedded: None) -> None:
    from facefleet.platform.db import migrate
    from facefleet.platform.db.models import Dataset
    from facefleet.platform.db.session import session_scope
    from facefleet.platform.settings import get_settings

    migrate.upgrade(get_settings().effective_database_url)
    with session_scope() as session:
        session.add(Dataset(name="week1", kind="inspection", description="", tags=[]))
    listing = runner.invoke(app, ["datasets", "list", "--kind", "inspection", "--json"])
    assert listing.exit_code == 0, listing.output
    assert [row["name"] for row in json.loads(listing.output)] == ["week1"]
    assert runner.invoke(app, ["datasets", "list", "--kind", "landmarks", "--json"]).output.strip() == "[]"
    unknown = runner.invoke(app, ["datasets", "list", "--kind", "bogus"])
    assert unknown.exit_code == 1 and "train, verification, landmarks, inspection" in unknown.output
