"""`facefleet devices` and `facefleet terminal` commands end to end against the live API."""

from __future__ import annotations

from pathlib import Path

import httpx
from typer.testing import CliRunner

from facefleet.cli import app
from tests.terminal.conftest import LiveApi
from tests.terminal.model_factory import register_test_model
from tests.terminal.synthetic_faces import face


def test_register_run_enroll_verify_status(live_api: LiveApi, tmp_path: Path) -> None:
    runner = CliRunner()
    registered = runner.invoke(app, ["devices", "register", "kiosk", "--group", "front"])
    assert registered.exit_code == 0, registered.output
    token = registered.output.strip().splitlines()[-1]
    with live_api.session() as session:
        version = register_test_model(session, live_api.store, tmp_path / "m1", threshold=0.5)
        session.commit()
        version_id = version.id
    response = httpx.post(
        f"{live_api.url}/v1/deployments",
        json={"model_version_id": version_id, "group": "front"},
        headers={"Authorization": f"Bearer {live_api.admin_key}"},
    )
    assert response.status_code == 201, response.text
    data_dir = str(tmp_path / "kiosk")
    ran = runner.invoke(
        app,
        [
            "terminal",
            "run",
            "--server",
            live_api.url,
            "--enroll-token",
            token,
            "--data-dir",
            data_dir,
            "--once",
        ],
    )
    assert ran.exit_code == 0 and "poll: installed" in ran.output, ran.output
    images = []
    for index in range(3):
        path = tmp_path / f"alice{index}.png"
        face(1, index).save(path)
        images.append(str(path))
    assert (
        runner.invoke(app, ["terminal", "enroll", "alice", *images[:2], "--data-dir", data_dir]).exit_code
        == 0
    )
    verified = runner.invoke(app, ["terminal", "verify", "alice", images[2], "--data-dir", data_dir])
    assert "score" in verified.output and verified.exit_code in (0, 2), verified.output
    status = runner.invoke(app, ["terminal", "status", "--data-dir", data_dir])
    assert "alice" in status.output and str(version_id) in status.output
    listed = runner.invoke(app, ["devices", "list"])
    assert "kiosk" in listed.output and "active" in listed.output and "0.1.0" in listed.output  # heartbeat
    assert runner.invoke(app, ["devices", "disable", "1"]).exit_code == 0
    again = runner.invoke(app, ["terminal", "run", "--data-dir", data_dir, "--once"])
    assert again.exit_code == 1 and "403" in again.output
