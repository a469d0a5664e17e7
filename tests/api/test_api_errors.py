"""Problem JSON for every rejection, no stack traces, pagination bounds, and a valid OpenAPI document."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.testclient import TestClient
from openapi_spec_validator import validate

from facefleet.api.app import create_app
from facefleet.platform.settings import get_settings
from tests.api.conftest import Api


def test_openapi_document_validates(sqlite_api: Api) -> None:
    spec = sqlite_api.client.get("/openapi.json").json()
    validate(spec)
    assert "/v1/runs/{run_id}:cancel" in spec["paths"] and "/v1/device/enroll" in spec["paths"]
    assert sqlite_api.client.get("/docs").status_code == 200


def test_unknown_fields_and_wrong_types_name_the_field(sqlite_api: Api) -> None:
    api = sqlite_api
    extra = api.client.post(
        "/v1/policies", headers=api.admin, json={"name": "p", "triggers": ["manual"], "colour": "red"}
    )
    assert extra.status_code == 422
    body = extra.json()
    assert body["field"] == "colour" and "remove this field" in body["detail"]
    assert set(body) >= {"type", "title", "status", "detail", "field"} and body["status"] == 422
    wrong = api.client.post(
        "/v1/policies",
        headers=api.admin,
        json={"name": "p", "triggers": ["manual"], "debounce_seconds": "soon"},
    )
    assert wrong.status_code == 422 and wrong.json()["field"] == "debounce_seconds"
    nested = api.client.post(
        "/v1/policies",
        headers=api.admin,
        json={"name": "p", "triggers": ["manual"], "base_config": {"head": {"kind": "x"}}},
    )
    assert nested.status_code == 422 and nested.json()["field"] == "base_config.head.kind"
    not_json = api.client.post(
        "/v1/policies", headers={**api.admin, "Content-Type": "application/json"}, content=b"{not json"
    )
    assert not_json.status_code == 422 and not_json.json()["type"].startswith("https://")
    bad_path = api.client.get("/v1/runs/abc", headers=api.viewer)
    assert bad_path.status_code == 422 and bad_path.json()["field"] == "run_id"


def test_unknown_routes_and_methods_are_problems(sqlite_api: Api) -> None:
    missing = sqlite_api.client.get("/v1/nothing-here", headers=sqlite_api.viewer)
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    assert "/docs" in missing.json()["detail"]
    wrong_method = sqlite_api.client.put("/v1/runs", headers=sqlite_api.admin)
    assert wrong_method.status_code == 405 and "not allowed" in wrong_method.json()["detail"]


def test_unhandled_errors_are_500_without_a_trace(sqlite_engine, local_store, caplog) -> None:  # type: ignore[no-untyped-def]
    app = create_app(get_settings(), engine=sqlite_engine, store=local_store)
    boom = APIRouter()

    @boom.get("/boom")
    def _boom() -> None:
        raise RuntimeError("secret internal detail")

    app.include_router(boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    assert response.status_code == 500
    assert "secret" not in response.text and "Traceback" not in response.text
    assert response.json()["title"] == "Internal server error"
    assert "secret internal detail" in caplog.text


def test_pagination_bounds_and_pages(api: Api) -> None:
    for index in range(5):
        api.client.post("/v1/policies", headers=api.admin, json={"name": f"p{index}", "triggers": ["manual"]})
    page = api.client.get("/v1/policies", headers=api.viewer, params={"limit": 2, "offset": 2}).json()
    assert [p["name"] for p in page["items"]] == ["p2", "p3"]
    assert (page["total"], page["limit"], page["offset"]) == (5, 2, 2)
    too_big = api.client.get("/v1/policies", headers=api.viewer, params={"limit": 501})
    assert too_big.status_code == 422 and too_big.json()["field"] == "limit"
    assert api.client.get("/v1/policies", headers=api.viewer, params={"offset": -1}).status_code == 422
