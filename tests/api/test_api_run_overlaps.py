"""GET /v1/runs/{id}/overlaps and `facefleet runs overlaps ID [--json] [--server]`: pages of the stored list,
identity names, and 404/409 that say why there is none."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from facefleet.cli import app as cli_app
from facefleet.nn.backbones import get_backbone
from facefleet.platform.db.models import Run
from facefleet.platform.runs import service
from facefleet.platform.settings import get_settings
from facefleet.terminal.demo import serve_in_background
from facefleet.workers.data import label_space_for_versions
from facefleet.workers.overlaps import compute_overlaps, store_overlaps
from tests.api.conftest import Api, register_folder

runner = CliRunner()
TINY = {"backbone": "tiny", "steps": 2, "reversal": {"enabled": False}}


def _create(api: Api, datasets: list[str]) -> int:
    response = api.client.post(
        "/v1/runs", headers=api.admin, json={"datasets": datasets, "config": TINY, "start": False}
    )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def _succeed(api: Api, run_id: int) -> None:
    with api.session() as session:
        run = session.get(Run, run_id)
        assert run is not None
        run.status = "succeeded"
        session.commit()


def _store_list(api: Api, run_id: int) -> int:
    """The worker's own computation (an untrained tiny backbone); returns the number of pairs."""
    with api.session() as session:
        run = service.get_run(session, run_id)
        entries = label_space_for_versions(
            session, [row.dataset_version_id for row in run.datasets if row.role == "train"]
        )
    torch.manual_seed(0)
    backbone = get_backbone("tiny", embedding_dim=16, input_size=32)
    # false-match rate 0.5: a cut low enough that an untrained backbone lists pairs to page through
    document = compute_overlaps(run_id, api.store, entries, backbone, input_size=32, false_match_rate=0.5)
    summary = store_overlaps(api.store, document)
    assert summary["count"] == document.count and summary["key"] == f"runs/{run_id}/overlaps.json"
    return document.count


def test_overlaps_route_pages_and_names_identities(sqlite_api: Api) -> None:
    api = sqlite_api
    register_folder(api, "faces-a", seed=1, identities=4)
    register_folder(api, "faces-b", seed=2, identities=4)
    run_id = _create(api, ["faces-a", "faces-b"])
    url = f"/v1/runs/{run_id}/overlaps"

    queued = api.client.get(url, headers=api.viewer)
    assert queued.status_code == 409 and "is queued" in queued.json()["detail"]
    _succeed(api, run_id)
    missing = api.client.get(url, headers=api.viewer)
    assert missing.status_code == 404 and "has no overlap list" in missing.json()["detail"]

    count = _store_list(api, run_id)
    assert count >= 2
    body = api.client.get(url, headers=api.viewer).json()
    assert body["count"] == count == len(body["pairs"]) and body["datasets"] == ["faces-a:1", "faces-b:1"]
    first = body["pairs"][0]
    assert first["first"]["dataset"] == "faces-a" and first["second"]["dataset"] == "faces-b"
    assert first["first"]["identity"] and first["second"]["identity"]  # the identity folder names
    assert 0 <= first["first"]["class_index"] < 4 <= first["second"]["class_index"] < 8
    scores = [pair["score"] for pair in body["pairs"]]
    assert scores == sorted(scores, reverse=True) and min(scores) >= body["threshold"]
    page = api.client.get(url, headers=api.viewer, params={"offset": 1, "limit": 1}).json()
    assert page["pairs"] == body["pairs"][1:2] and (page["offset"], page["limit"]) == (1, 1)
    assert api.client.get(url, headers=api.viewer, params={"limit": 0}).status_code == 422
    assert api.client.get(url).status_code == 401


def test_overlaps_need_two_datasets_and_an_existing_run(sqlite_api: Api) -> None:
    api = sqlite_api
    register_folder(api, "faces-a", seed=1)
    single = _create(api, ["faces-a"])
    _succeed(api, single)
    response = api.client.get(f"/v1/runs/{single}/overlaps", headers=api.viewer)
    assert response.status_code == 409 and "at least two" in response.json()["detail"]
    response = api.client.get("/v1/runs/9999/overlaps", headers=api.viewer)
    assert response.status_code == 404 and "does not exist" in response.json()["detail"]


def test_cli_overlaps_locally_and_against_a_server(sqlite_api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    api = sqlite_api
    register_folder(api, "faces-a", seed=1, identities=4)
    register_folder(api, "faces-b", seed=2, identities=4)
    run_id = _create(api, ["faces-a", "faces-b"])
    not_yet = runner.invoke(cli_app, ["runs", "overlaps", str(run_id)])
    assert not_yet.exit_code != 0 and "is queued" in not_yet.output
    _succeed(api, run_id)
    count = _store_list(api, run_id)

    table = runner.invoke(cli_app, ["runs", "overlaps", str(run_id), "--limit", "1"])
    assert table.exit_code == 0, table.output
    assert "faces-a:1" in table.output and "faces-b:1" in table.output
    assert f"of {count}; more with --offset 1" in table.output
    local = runner.invoke(cli_app, ["runs", "overlaps", str(run_id), "--json"])
    assert local.exit_code == 0, local.output
    local_body = json.loads(local.output)
    assert local_body["count"] == count and len(local_body["pairs"]) == count

    monkeypatch.setenv("FACEFLEET_API_KEY", api.viewer["Authorization"].removeprefix("Bearer "))
    get_settings.cache_clear()
    from facefleet.api.app import create_app

    with serve_in_background(create_app(get_settings(), engine=api.engine, store=api.store)) as url:
        remote = runner.invoke(cli_app, ["runs", "overlaps", str(run_id), "--json", "--server", url])
        assert remote.exit_code == 0, remote.output
        assert json.loads(remote.output) == local_body
        gone = runner.invoke(cli_app, ["runs", "overlaps", "9999", "--server", url])
        assert gone.exit_code != 0 and "does not exist" in gone.output
