"""/v1/datasets: register from a path and by streamed upload, list, show with report, delete (409 in use)."""

from __future__ import annotations

import shutil

import pytest

from facefleet.platform.datasets.schemas import DATASET_KINDS
from facefleet.platform.db.models import Dataset
from tests.api.conftest import Api, make_imagefolder, register_folder


def test_register_list_show_and_delete(api: Api) -> None:
    version = register_folder(api, "faces-a", tags=["asia"])
    assert (version["version"], version["status"], version["identity_count"]) == (1, "ready", 3)
    assert version["report"]["image_count"] == 9
    folder = api.tmp / "src-faces-a-0"
    again = api.client.post(
        "/v1/datasets", headers=api.admin, json={"name": "faces-a", "source": str(folder)}
    )
    assert again.status_code == 200 and again.json()["id"] == version["id"]
    register_folder(api, "lfw", kind="verification")

    listed = api.client.get("/v1/datasets", headers=api.viewer).json()
    assert [d["name"] for d in listed["items"]] == ["faces-a", "lfw"]
    assert listed["items"][0]["latest_version"] == 1 and listed["items"][0]["tags"] == ["asia"]
    verification = api.client.get("/v1/verification-sets", headers=api.viewer).json()
    assert [d["name"] for d in verification["items"]] == ["lfw"]
    assert api.client.get("/v1/datasets", headers=api.viewer, params={"kind": "train"}).json()["total"] == 1
    versions = api.client.get("/v1/datasets/faces-a/versions", headers=api.viewer).json()
    assert versions["total"] == 1 and "report" not in versions["items"][0]
    detail = api.client.get("/v1/datasets/faces-a/versions/1", headers=api.viewer).json()
    assert detail["report"]["identity_count"] == 3
    assert api.client.get("/v1/datasets/faces-a/versions/7", headers=api.viewer).status_code == 404
    missing = api.client.get("/v1/datasets/nope", headers=api.viewer)
    assert missing.status_code == 404 and missing.json()["field"] == "name"

    assert api.client.delete("/v1/datasets/lfw", headers=api.admin).status_code == 204
    assert api.client.get("/v1/datasets/lfw", headers=api.viewer).status_code == 404
    assert not api.store.list("datasets/lfw/")


def test_delete_of_a_dataset_in_use_is_409(api: Api) -> None:
    register_folder(api, "faces-a")
    run = api.client.post(
        "/v1/runs",
        headers=api.admin,
        json={
            "datasets": ["faces-a"],
            "config": {"backbone": "tiny", "steps": 2, "reversal": {"enabled": False}},
            "start": False,
        },
    )
    assert run.status_code == 201, run.text
    conflict = api.client.delete("/v1/datasets/faces-a", headers=api.admin)
    assert conflict.status_code == 409 and "run(s)" in conflict.json()["detail"]
    assert conflict.json()["field"] == "name"


def test_bad_sources_are_422_and_change_nothing(api: Api) -> None:
    missing = api.client.post(
        "/v1/datasets", headers=api.admin, json={"name": "x", "source": str(api.tmp / "does-not-exist")}
    )
    assert missing.status_code == 422 and missing.json()["field"] == "source"
    bad_name = api.client.post("/v1/datasets", headers=api.admin, json={"name": "../x", "source": "/tmp"})
    assert bad_name.status_code == 422 and bad_name.json()["field"] == "name"
    assert api.client.get("/v1/datasets", headers=api.viewer).json()["total"] == 0


def test_streamed_upload_of_an_archive(sqlite_api: Api) -> None:
    api = sqlite_api
    folder = make_imagefolder(api.tmp / "up", identities=2, seed=3)
    archive = shutil.make_archive(str(api.tmp / "faces"), "zip", folder)
    with open(archive, "rb") as handle:
        response = api.client.post(
            "/v1/datasets/upload",
            headers=api.admin,
            data={"name": "uploaded", "tags": "a, b"},
            files={"file": ("faces.zip", handle, "application/zip")},
        )
    assert response.status_code == 201, response.text
    assert response.json()["identity_count"] == 2
    assert api.client.get("/v1/datasets/uploaded", headers=api.viewer).json()["tags"] == ["a", "b"]
    wrong = api.client.post(
        "/v1/datasets/upload",
        headers=api.admin,
        data={"name": "w"},
        files={"file": ("faces.exe", b"MZ...", "application/octet-stream")},
    )
    assert wrong.status_code == 422 and wrong.json()["field"] == "file"
    no_file = api.client.post("/v1/datasets/upload", headers=api.admin, data={"name": "w"})
    assert no_file.status_code == 422 and no_file.json()["field"] == "file"


def test_upload_over_the_limit_is_413(sqlite_api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    api = sqlite_api
    monkeypatch.setattr(api.client.app.state.settings, "upload_max_bytes", 1000)  # type: ignore[attr-defined]
    response = api.client.post(
        "/v1/datasets/upload",
        headers=api.admin,
        data={"name": "big"},
        files={"file": ("big.zip", b"x" * 5000, "application/zip")},
    )
    assert response.status_code == 413 and "limit" in response.json()["detail"]


def test_list_filter_accepts_every_dataset_kind(sqlite_api: Api) -> None:
    api = sqlite_api
    register_folder(api, "faces-a")
    with api.session() as session:  # an inspection set is a dataset of kind inspection
        session.add(Dataset(name="week1", kind="inspection", description="", tags=["inspection"]))
        session.commit()
    for kind, names in {
        "train": ["faces-a"],
        "inspection": ["week1"],
        "landmarks": [],
        "verification": [],
    }.items():
        listed = api.client.get("/v1/datasets", headers=api.viewer, params={"kind": kind})
        assert listed.status_code == 200, listed.text
        assert [d["name"] for d in listed.json()["items"]] == names
    unknown = api.client.get("/v1/datasets", headers=api.viewer, params={"kind": "bogus"})
    assert unknown.status_code == 422 and unknown.json()["field"] == "kind"
    for allowed in DATASET_KINDS:
        assert f"'{allowed}'" in unknown.json()["detail"]
