"""Inspection over HTTP: collection in the assignment, POST /v1/device/attempts and its refusals, the
inspector role (403 everywhere else), verdicts, erasure, inspection sets, and the CLI in both modes."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import func, select
from typer.testing import CliRunner

from facefleet.api.app import create_app
from facefleet.commands import inspections as inspections_cli
from facefleet.platform.datasets import shards
from facefleet.platform.db.models import Attempt, AuditEvent, Device
from facefleet.platform.settings import get_settings
from tests.api.conftest import Api, seed_key
from tests.api.test_api_fleet import enrolled_device, signed_version
from tests.fixtures.servers import free_port
from tests.platform.inspections.factories import attempt_body, b64, crop_png

runner = CliRunner()


def _deployed(api: Api, names: tuple[str, ...] = ("door-1",)) -> tuple[list[dict[str, str]], int]:
    devices = [enrolled_device(api, name) for name in names]
    version_id = signed_version(api)
    response = api.client.post(
        "/v1/deployments", headers=api.admin, json={"model_version_id": version_id, "group": "lobby"}
    )
    assert response.status_code == 201, response.text
    return devices, version_id


def _collect(api: Api, **settings: Any) -> dict[str, Any]:
    response = api.client.put("/v1/collection/lobby", headers=api.admin, json=settings)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _upload(
    api: Api, device: dict[str, str], version_id: int, seed: int = 0, **fields: Any
) -> httpx.Response:
    body = attempt_body(version_id, seed, **fields).model_dump(mode="json")
    return api.client.post("/v1/device/attempts", headers=device, json=body)


def _stored(api: Api) -> tuple[int, list[str]]:
    with api.session() as session:
        rows = int(session.scalar(select(func.count()).select_from(Attempt)) or 0)
    return rows, api.store.list("attempts/")


def test_the_assignment_carries_collection_and_uploads_follow_it(sqlite_api: Api) -> None:
    api = sqlite_api
    (device,), version_id = _deployed(api)
    first = api.client.get("/v1/device/assignment", headers=device)
    assert first.json()["collection"]["enabled"] is False
    refused = _upload(api, device, version_id)
    assert refused.status_code == 409 and "collection is off" in refused.json()["detail"]
    assert _stored(api) == (0, [])
    assert api.client.put("/v1/collection/lobby", headers=api.viewer, json={}).status_code == 403
    _collect(api, sample_rate=0.5, attempts="near_threshold", near_threshold_band=0.1, retention_days=3)
    again = api.client.get(
        "/v1/device/assignment", headers={**device, "If-None-Match": first.headers["ETag"]}
    )
    assert again.status_code == 200 and again.headers["ETag"] != first.headers["ETag"]  # no stale 304
    assert again.json()["collection"] == {
        "enabled": True,
        "sample_rate": 0.5,
        "attempts": "near_threshold",
        "near_threshold_band": 0.1,
    }
    stored = _upload(api, device, version_id)
    assert stored.status_code == 201, stored.text
    rows, keys = _stored(api)
    assert rows == 1 and len(keys) == 2 and all(k.startswith("attempts/") for k in keys)
    listed = api.client.get("/v1/collection", headers=api.admin).json()
    assert [c["group"] for c in listed] == ["lobby"]
    bad = api.client.put("/v1/collection/lobby", headers=api.admin, json={"sample_rate": 2})
    assert bad.status_code == 422 and bad.json()["field"].endswith("sample_rate")


@pytest.mark.parametrize(
    "case", ["disabled", "too_big", "unknown_version", "extra_field", "bad_image", "rate"]
)
def test_refused_uploads_are_4xx_and_store_nothing(sqlite_api: Api, case: str) -> None:
    api = sqlite_api
    (device,), version_id = _deployed(api)
    _collect(api, attempts="all")
    settings = api.client.app.state.settings  # type: ignore[attr-defined]
    expected = {"disabled": 403, "too_big": 413, "unknown_version": 422, "extra_field": 422}
    expected |= {"bad_image": 422, "rate": 429}
    if case == "rate":
        settings.attempt_rate_per_hour = 2
        assert all(_upload(api, device, version_id, seed).status_code == 201 for seed in range(2))
    before = _stored(api)
    if case == "disabled":
        with api.session() as session:
            device_id = session.scalars(select(Device.id)).one()
        api.client.post(f"/v1/devices/{device_id}/disable", headers=api.admin)
        response = _upload(api, device, version_id)
    elif case == "too_big":
        settings.attempt_max_bytes = 4096
        response = _upload(api, device, version_id, probe_png_b64=b64(crop_png(1, size=128)))
    elif case == "unknown_version":
        response = _upload(api, device, signed_version(api, "other", 1))
    elif case == "extra_field":
        body = attempt_body(version_id).model_dump(mode="json") | {"identity": "bob"}
        response = api.client.post("/v1/device/attempts", headers=device, json=body)
    elif case == "bad_image":
        response = _upload(api, device, version_id, reference_png_b64="bm90IGFuIGltYWdl")
    else:
        response = _upload(api, device, version_id, seed=5)
    assert response.status_code == expected[case], response.text
    problem = response.json()
    assert problem["status"] == expected[case] and problem["detail"] and "Traceback" not in response.text
    assert _stored(api) == before
    assert api.client.post("/v1/device/attempts", headers=api.admin, json={}).status_code == 403


def test_inspector_lists_and_labels_and_gets_403_everywhere_else(sqlite_api: Api) -> None:
    api = sqlite_api
    (device,), version_id = _deployed(api)
    _collect(api, attempts="all")
    attempt_id = _upload(api, device, version_id).json()["id"]
    inspector = seed_key(api.engine, "inspector", "ann")
    pending = api.client.get("/v1/inspections", headers=inspector, params={"status": "pending"})
    assert pending.status_code == 200 and [a["id"] for a in pending.json()["items"]] == [attempt_id]
    item = pending.json()["items"][0]
    for url in (item["probe_url"], item["reference_url"]):
        image = api.client.get(url, headers=inspector)
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    labelled = api.client.post(
        f"/v1/inspections/{attempt_id}", headers=inspector, json={"verdict": "genuine"}
    )
    assert labelled.status_code == 200 and labelled.json()["verdict"] == "genuine"
    assert labelled.json()["labelled_by"].endswith(":ann")
    bad = api.client.post(f"/v1/inspections/{attempt_id}", headers=inspector, json={"verdict": "maybe"})
    assert bad.status_code == 422
    missing = api.client.post("/v1/inspections/424242", headers=inspector, json={"verdict": "genuine"})
    assert missing.status_code == 404
    assert api.client.get("/v1/inspections", headers=inspector).json()["items"] == []
    for method, path in [
        ("GET", "/v1/runs"),
        ("GET", "/v1/datasets"),
        ("GET", "/v1/models"),
        ("GET", "/v1/audit"),
        ("GET", "/v1/devices"),
        ("GET", "/v1/policies"),
        ("POST", "/v1/keys"),
        ("DELETE", "/v1/inspections?device=1"),
        ("POST", "/v1/inspection-sets"),
        ("PUT", "/v1/collection/lobby"),
        ("GET", "/v1/device/assignment"),
    ]:
        response = api.client.request(method, path, headers=inspector, json={})
        assert response.status_code == 403, (method, path, response.text)
    assert "inspector" in api.client.get("/v1/runs", headers=inspector).json()["detail"]
    assert api.client.get("/v1/inspections", headers=api.viewer).status_code == 403  # faces: not viewers
    assert api.client.get("/v1/inspections", headers=api.admin).status_code == 200
    with api.session() as session:
        actions = list(session.scalars(select(AuditEvent.action).where(AuditEvent.target_type == "attempt")))
    assert actions == ["inspections.label"]


def test_export_and_erasure_over_http(sqlite_api: Api) -> None:
    api = sqlite_api
    (door, gate), version_id = _deployed(api, ("door-1", "gate-1"))
    _collect(api, attempts="all")
    ids = [
        _upload(api, device, version_id, seed).json()["id"] for seed, device in enumerate((door, gate, door))
    ]
    for attempt_id, verdict in zip(ids, ("genuine", "impostor", "unusable"), strict=True):
        api.client.post(f"/v1/inspections/{attempt_id}", headers=api.admin, json={"verdict": verdict})
    created = api.client.post("/v1/inspection-sets", headers=api.admin, json={"name": "lobby-inspected"})
    assert created.status_code == 201, created.text
    version = created.json()
    assert version["format"] == "inspection" and version["pair_count"] == 2
    assert version["report"]["genuine"] == 1 and version["report"]["impostor"] == 1
    assert shards.read_pairs(api.store, version["manifest_key"].replace("manifest", "pairs")) == [
        (0, 1, True),
        (2, 3, False),
    ]
    listed = api.client.get("/v1/datasets", headers=api.admin).json()["items"]
    assert [(d["name"], d["kind"]) for d in listed] == [("lobby-inspected", "inspection")]
    with api.session() as session:
        door_id = session.scalars(select(Device.id).where(Device.name == "door-1")).one()
    erased = api.client.delete("/v1/inspections", headers=api.admin, params={"device": door_id})
    assert erased.status_code == 200 and erased.json() == {
        "device_id": door_id,
        "deleted": 2,
        "inspection_sets_deleted": ["lobby-inspected:1"],  # it held door-1's crops; no run used it
        "inspection_sets_kept": [],
    }
    assert api.store.list("datasets/lobby-inspected/1/") == []
    versions = api.client.get("/v1/datasets/lobby-inspected/versions", headers=api.admin)
    assert [(v["version"], v["status"]) for v in versions.json()["items"]] == [(1, "erased")]
    assert api.store.list(f"attempts/{door_id}/") == []
    remaining = api.client.get("/v1/inspections", headers=api.admin, params={"status": "labelled"})
    assert [a["id"] for a in remaining.json()["items"]] == [ids[1]]
    assert api.client.delete("/v1/inspections", headers=api.admin).status_code == 422  # device= is required


@pytest.fixture
def server_url(sqlite_api: Api) -> Iterator[str]:
    """The same database and store as ``sqlite_api``, served on loopback for the CLI's remote mode."""
    port = free_port()
    app = create_app(get_settings(), engine=sqlite_api.engine, store=sqlite_api.store)
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield url
    uv.should_exit = True
    thread.join(timeout=10)


def _cli(*args: str) -> Any:
    result = runner.invoke(inspections_cli.app, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.output) if "--json" in args else result.output


def test_cli_local_and_remote(sqlite_api: Api, server_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    api = sqlite_api
    (device,), version_id = _deployed(api)
    assert "collection for group lobby: on: all" in _cli("collect", "lobby", "--attempts", "all")
    first, second = (_upload(api, device, version_id, seed).json()["id"] for seed in range(2))
    assert [a["id"] for a in _cli("list", "--json")] == [first, second]
    assert _cli("label", str(first), "genuine", "--json")["verdict"] == "genuine"
    inspector = seed_key(api.engine, "inspector", "remote-ann")["Authorization"].removeprefix("Bearer ")
    monkeypatch.setenv("FACEFLEET_API_KEY", inspector)
    get_settings.cache_clear()
    remote = _cli("list", "--server", server_url, "--json")
    assert [a["id"] for a in remote] == [second]
    assert _cli("label", str(second), "impostor", "--server", server_url, "--json")["verdict"] == "impostor"
    refused = runner.invoke(inspections_cli.app, ["export", "x", "--server", server_url])
    assert refused.exit_code == 1 and "inspector" in refused.output  # an inspector key exports nothing
    wrong = runner.invoke(inspections_cli.app, ["label", str(second), "maybe"])
    assert wrong.exit_code == 1 and "verdict" in wrong.output
    exported = _cli("export", "lobby-inspected", "--json")  # local mode
    assert exported["pair_count"] == 2 and exported["report"]["kind"] == "inspection"
    labelled = _cli("list", "--status", "labelled")
    assert "genuine" in labelled and "impostor" in labelled
    with api.session() as session:
        device_id = session.scalars(select(Device.id)).one()
        actors = set(
            session.scalars(select(AuditEvent.actor).where(AuditEvent.action == "inspections.label"))
        )
    assert actors == {"cli", next(a for a in actors if a.endswith(":remote-ann"))}
    assert _cli("erase", "--device", str(device_id), "--json") == {
        "device_id": device_id,
        "deleted": 2,
        "inspection_sets_deleted": ["lobby-inspected:1"],
        "inspection_sets_kept": [],
    }


def test_an_inspector_key_cannot_use_the_web_console(sqlite_api: Api) -> None:
    api = sqlite_api
    key = seed_key(api.engine, "inspector", "ann")["Authorization"].removeprefix("Bearer ")
    form = api.client.get("/ui/login")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token, form.text
    api.client.post(
        "/ui/login",
        data={"api_key": key, "csrf": token.group(1), "next": "/ui/runs"},
        follow_redirects=False,
    )
    page = api.client.get("/ui/runs", follow_redirects=False)
    assert page.status_code == 403 and "inspector" in page.text, (page.status_code, page.text[:300])
    assert api.client.get("/v1/runs").status_code in (401, 403)  # the console cookie opens no API route
