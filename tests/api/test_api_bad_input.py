"""Nasty inputs (traversal, huge numbers, odd text, broken bodies, uploads): 4xx problems, nothing written."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import func, select

from facefleet.platform.db.models import ApiKey, AuditEvent, Dataset, DatasetVersion, Run
from tests.api.conftest import Api, register_folder

HUGE = "9" * 30  # far past any database integer


def assert_problem(response: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    """A problem JSON of ``status`` that names ``field`` (when given) and carries no stack trace."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["detail"] and body["type"].startswith("https://")
    assert "Traceback" not in response.text and 'File "' not in response.text
    if field is not None:
        assert body.get("field") == field, body
    return body


def counts(api: Api) -> dict[str, int]:
    with api.session() as session:
        return {
            model.__name__: session.scalar(select(func.count()).select_from(model)) or 0
            for model in (Dataset, DatasetVersion, Run, ApiKey, AuditEvent)
        }


def stored_objects(api: Api) -> list[str]:
    return list(api.store.list(""))


def test_traversal_in_path_parameters_finds_nothing(sqlite_api: Api) -> None:
    api = sqlite_api
    register_folder(api, "faces")
    run = api.client.post(
        "/v1/runs",
        headers=api.admin,
        json={
            "datasets": ["faces"],
            "config": {"reversal": {"enabled": False}},
            "start": False,
        },
    )
    assert run.status_code == 201, run.text
    run_id = run.json()["id"]
    for path in (
        "/v1/datasets/..%2F..%2Fetc",
        "/v1/datasets/%2e%2e",
        f"/v1/runs/{run_id}/plots/..%2F..%2Fdatasets",
        f"/v1/runs/{run_id}/plots/%2e%2e",
        "/v1/models/..%2Fx/versions/latest/artifacts/..%2F..%2Fsecret",
    ):
        response = api.client.get(path, headers=api.viewer)
        assert 400 <= response.status_code < 500, (path, response.text)
        assert_problem(response, response.status_code)


def test_ids_and_pages_out_of_range_are_422_naming_the_parameter(sqlite_api: Api) -> None:
    """A number too large for the database used to reach it and come back as a 500 (integer overflow)."""
    api = sqlite_api
    for path, field in (
        (f"/v1/runs/{HUGE}", "run_id"),
        (f"/v1/policies/{HUGE}", "policy_id"),
        (f"/v1/devices/{HUGE}", "device_id"),
        (f"/v1/deployments/{HUGE}", "deployment_id"),
        ("/v1/runs/-3", "run_id"),
        ("/v1/datasets/faces/versions/0", "version"),
        (f"/v1/runs?policy_id={HUGE}", "policy_id"),
        (f"/v1/devices?offset={HUGE}", "offset"),
        ("/v1/runs?offset=-5", "offset"),
        ("/v1/datasets?limit=0", "limit"),
        ("/v1/datasets?limit=-1", "limit"),
        (f"/v1/audit?limit={HUGE}", "limit"),
        ("/v1/keys?limit=ten", "limit"),
        ("/v1/audit?since=yesterday", "since"),
    ):
        assert_problem(api.client.get(path, headers=api.admin), 422, field)
    assert_problem(api.client.delete(f"/v1/keys/{HUGE}", headers=api.admin), 422, "key_id")
    deployment = api.client.post(
        "/v1/deployments", headers=api.admin, json={"model_version_id": int(HUGE), "group": "lobby"}
    )
    assert_problem(deployment, 422, "model_version_id")
    paced = api.client.post(
        "/v1/deployments",
        headers=api.admin,
        json={"model_version_id": 1, "group": "lobby", "release_per_minute": 0},
    )
    assert_problem(paced, 422, "release_per_minute")


def test_odd_version_references_are_404_not_500(sqlite_api: Api) -> None:
    """'²' passes str.isdigit() but int() refuses it; huge numbers overflow the database."""
    api = sqlite_api
    register_folder(api, "faces")
    for version in ("²", HUGE, "latest"):
        response = api.client.get(f"/v1/models/m/versions/{version}", headers=api.viewer)
        assert_problem(response, 404)
    before = counts(api)
    for ref in (HUGE, f"faces:{HUGE}", "faces:²", "²"):
        response = api.client.post("/v1/runs", headers=api.admin, json={"datasets": [ref], "start": False})
        assert 400 <= response.status_code < 500, (ref, response.text)
        assert_problem(response, response.status_code, "datasets")
    assert counts(api) == before


def test_long_and_unicode_names(sqlite_api: Api) -> None:
    api = sqlite_api
    before = counts(api)
    assert_problem(api.client.get("/v1/datasets/" + "a" * 5000, headers=api.viewer), 404, "name")
    assert_problem(api.client.get("/v1/datasets/名前", headers=api.viewer), 404, "name")
    assert_problem(api.client.get("/v1/models/😀/aliases", headers=api.viewer), 404, "name")
    long_key = api.client.post("/v1/keys", headers=api.admin, json={"name": "k" * 5000, "role": "viewer"})
    assert_problem(long_key, 422, "name")
    unicode_dataset = api.client.post(
        "/v1/datasets", headers=api.admin, json={"name": "données", "source": str(api.tmp)}
    )
    assert_problem(unicode_dataset, 422, "name")
    assert counts(api) == before


def test_text_the_database_cannot_store_is_422(api: Api) -> None:
    """A NUL character in a name is refused by the one name rule, on every database alike."""
    before = counts(api)
    response = api.client.post("/v1/keys", headers=api.admin, json={"name": "ci\u0000bot", "role": "viewer"})
    assert_problem(response, 422, "name")
    assert counts(api) == before


def test_bodies_that_are_not_json_objects(sqlite_api: Api) -> None:
    api = sqlite_api
    before = counts(api)
    json_headers = {**api.admin, "Content-Type": "application/json"}
    for content in (b"", b"{not json", b"[1, 2]", b"null", b'"text"', b"\xff\xfe"):
        response = api.client.post("/v1/keys", headers=json_headers, content=content)
        assert response.status_code in (400, 422), (content, response.text)
        assert_problem(response, response.status_code)
    text_body = api.client.post(
        "/v1/keys",
        headers={**api.admin, "Content-Type": "text/plain"},
        content=b'{"name": "x", "role": "admin"}',
    )
    assert text_body.status_code in (415, 422), text_body.text
    assert_problem(text_body, text_body.status_code)
    form = api.client.post("/v1/keys", headers=api.admin, data={"name": "x", "role": "admin"})
    assert form.status_code == 422
    assert_problem(form, 422)
    json_upload = api.client.post("/v1/datasets/upload", headers=api.admin, json={"name": "faces"})
    assert_problem(json_upload, 422)
    assert counts(api) == before


def test_empty_and_non_archive_uploads_write_nothing(sqlite_api: Api) -> None:
    api = sqlite_api
    before = counts(api)
    empty = api.client.post(
        "/v1/datasets/upload", headers=api.admin, data={"name": "faces"}, files={"file": ("faces.zip", b"")}
    )
    body = assert_problem(empty, 422, "file")
    assert "empty" in body["detail"]
    wrong_suffix = api.client.post(
        "/v1/datasets/upload", headers=api.admin, data={"name": "faces"}, files={"file": ("faces.exe", b"MZ")}
    )
    assert_problem(wrong_suffix, 422, "file")
    no_file = api.client.post("/v1/datasets/upload", headers=api.admin, data={"name": "faces"})
    assert_problem(no_file, 422, "file")
    traversal_name = api.client.post(
        "/v1/datasets/upload",
        headers=api.admin,
        data={"name": "../faces"},
        files={"file": ("../../faces.zip", b"PK")},
    )
    assert_problem(traversal_name, 422, "name")
    assert counts(api) == before and stored_objects(api) == []
    for file_name, content in (
        ("faces.zip", b"this is not a zip archive"),
        ("faces.tar.gz", b"\x1f\x8b junk"),
    ):
        response = api.client.post(
            "/v1/datasets/upload",
            headers=api.admin,
            data={"name": "faces"},
            files={"file": (file_name, content)},
        )
        assert_problem(response, 422, "source")
    # A broken archive is remembered as an ``invalid`` version with its error (the validation report),
    # but nothing reaches the store and no version is ready.
    assert stored_objects(api) == []
    with api.session() as session:
        statuses = set(session.scalars(select(DatasetVersion.status)))
    assert statuses <= {"invalid"}
