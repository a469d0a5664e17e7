"""`facefleet keys` locally (bootstrap) and against a real server on loopback (remote mode)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from sqlalchemy import Engine
from typer.testing import CliRunner

from facefleet.api.app import create_app
from facefleet.client import FacefleetClient, remote_client
from facefleet.commands import keys
from facefleet.platform.errors import NotFoundError, PermissionDeniedError
from facefleet.platform.settings import get_settings
from facefleet.platform.store import ObjectStore
from tests.fixtures.servers import free_port

runner = CliRunner()


@pytest.fixture
def server(sqlite_engine: Engine, local_store: ObjectStore) -> Iterator[str]:
    port = free_port()
    app = create_app(get_settings(), engine=sqlite_engine, store=local_store)
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield url
    uv.should_exit = True
    thread.join(timeout=10)


def _token(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("ffk_"))


def test_keys_bootstrap_locally_then_work_remotely(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    created = runner.invoke(keys.app, ["create", "--role", "admin", "--name", "first"])
    assert created.exit_code == 0, created.output
    admin = _token(created.output)
    monkeypatch.setenv("FACEFLEET_API_KEY", admin)
    get_settings.cache_clear()
    remote = runner.invoke(keys.app, ["create", "--role", "viewer", "--name", "dash", "--server", server])
    assert remote.exit_code == 0, remote.output
    viewer = _token(remote.output)
    listed = runner.invoke(keys.app, ["list", "--server", server])
    assert listed.exit_code == 0 and "first" in listed.output and "dash" in listed.output

    with FacefleetClient(server, viewer) as client:
        assert client.get("/v1/runs")["total"] == 0
        with pytest.raises(PermissionDeniedError, match="read-only"):
            client.post("/v1/keys", {"name": "x", "role": "admin"})
        with pytest.raises(NotFoundError):
            client.get("/v1/runs/42")
    client = remote_client(server)
    assert client is not None and [k["name"] for k in client.iter_pages("/v1/keys", page_size=1)] == [
        "dash",
        "first",
    ]
    client.close()

    revoked = runner.invoke(keys.app, ["revoke", "2", "--server", server])
    assert revoked.exit_code == 0
    assert httpx.get(f"{server}/v1/runs", headers={"Authorization": f"Bearer {viewer}"}).status_code == 401
    missing = runner.invoke(keys.app, ["revoke", "99"])
    assert missing.exit_code == 1 and "does not exist" in missing.output


def test_scheduler_command_runs_one_tick_on_a_fresh_database() -> None:
    import typer

    from facefleet.commands import server as server_commands

    app = typer.Typer()
    app.command()(server_commands.scheduler)
    app.command()(server_commands.serve)  # two commands, so typer keeps the command names
    result = runner.invoke(app, ["scheduler", "--once"])
    assert result.exit_code == 0, result.output
    assert "TickReport(skipped=False" in result.output


def test_keys_create_without_a_name_as_the_readme_shows(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """README: `facefleet keys create --role admin` (no --name) prints the first key, locally and remotely."""
    created = runner.invoke(keys.app, ["create", "--role", "admin"])
    assert created.exit_code == 0, created.output
    assert "created admin key 1 (admin-" in created.output
    monkeypatch.setenv("FACEFLEET_API_KEY", _token(created.output))
    get_settings.cache_clear()
    remote = runner.invoke(keys.app, ["create", "--role", "viewer", "--server", server])
    assert remote.exit_code == 0, remote.output
    with FacefleetClient(server, _token(created.output)) as client:
        names = [k["name"] for k in client.iter_pages("/v1/keys")]
    assert len(names) == 2 and names[0].startswith("viewer-") and names[1].startswith("admin-")
    bad = runner.invoke(keys.app, ["create", "--role", "admin", "--name", "ci\x00bot"])
    assert bad.exit_code == 1 and "name" in bad.output
