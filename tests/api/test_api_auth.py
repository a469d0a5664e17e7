"""Authentication, roles, device credentials, keys and the audit log, through HTTP on both databases."""

from __future__ import annotations

from sqlalchemy import select

from facefleet.platform.db.models import ApiKey
from tests.api.conftest import Api


def test_health_routes_need_no_key(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = api.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "store": "ok"}
    api.client.get("/v1/runs", headers=api.viewer)
    metrics = api.client.get("/metrics").text
    assert 'facefleet_http_requests_total{method="GET",route="/v1/runs",status="200"} 1.0' in metrics
    assert "facefleet_run_queue_depth 0.0" in metrics
    assert 'facefleet_runs{status="queued"} 0.0' in metrics


def test_missing_bad_and_revoked_keys_get_401(api: Api) -> None:
    response = api.client.get("/v1/runs")
    assert response.status_code == 401
    body = response.json()
    assert body["field"] == "Authorization" and "facefleet keys create" in body["detail"]
    assert response.headers["www-authenticate"] == "Bearer"
    assert api.client.get("/v1/runs", headers={"Authorization": "Bearer ffk_nope"}).status_code == 401
    assert api.client.get("/v1/runs", headers={"Authorization": "Basic abc"}).status_code == 401

    created = api.client.post("/v1/keys", headers=api.admin, json={"name": "temp", "role": "viewer"}).json()
    temp = {"Authorization": f"Bearer {created['key']}"}
    assert api.client.get("/v1/runs", headers=temp).status_code == 200
    assert api.client.delete(f"/v1/keys/{created['id']}", headers=api.admin).json()["revoked_at"]
    revoked = api.client.get("/v1/runs", headers=temp)
    assert revoked.status_code == 401 and "revoked" in revoked.json()["detail"]


def test_viewer_cannot_write_and_device_credentials_are_refused(api: Api) -> None:
    body = {"name": "p1", "triggers": ["manual"]}
    denied = api.client.post("/v1/policies", headers=api.viewer, json=body)
    assert denied.status_code == 403 and "viewer" in denied.json()["detail"]
    assert api.client.get("/v1/policies", headers=api.viewer).status_code == 200
    device = api.client.get("/v1/runs", headers={"Authorization": "Bearer ffd_somedevicetoken"})
    assert device.status_code == 403
    assert "device credentials are accepted only on /v1/device routes" in device.json()["detail"]
    assert api.client.post("/v1/policies", headers={"X-API-Key": "ffd_x"}, json=body).status_code == 403
    assert api.client.get("/v1/keys", headers=api.viewer).status_code == 403


def test_keys_are_shown_once_and_stored_hashed(api: Api) -> None:
    response = api.client.post("/v1/keys", headers=api.admin, json={"name": "ci-bot", "role": "admin"})
    assert response.status_code == 201
    created = response.json()
    assert created["key"].startswith("ffk_") and created["prefix"] == created["key"][:12]
    listed = api.client.get("/v1/keys", headers=api.admin).json()
    assert listed["total"] == 3 and all("key" not in item for item in listed["items"])
    with api.session() as session:
        stored = session.scalars(select(ApiKey).where(ApiKey.name == "ci-bot")).one()
        assert created["key"] not in stored.key_hash and len(stored.key_hash) == 64
    bad_role = api.client.post("/v1/keys", headers=api.admin, json={"name": "x", "role": "root"})
    assert bad_role.status_code == 422 and bad_role.json()["field"] == "role"
    assert api.client.delete("/v1/keys/9999", headers=api.admin).status_code == 404


def test_state_changes_are_audited(api: Api) -> None:
    created = api.client.post(
        "/v1/policies", headers=api.admin, json={"name": "nightly", "triggers": ["manual"]}
    )
    policy_id = created.json()["id"]
    api.client.patch(f"/v1/policies/{policy_id}", headers=api.admin, json={"debounce_seconds": 5})
    api.client.post(f"/v1/policies/{policy_id}:fire", headers=api.admin)
    api.client.delete(f"/v1/policies/{policy_id}", headers=api.admin)
    events = api.client.get("/v1/audit", headers=api.viewer, params={"action": "policies."}).json()
    assert [e["action"] for e in events["items"]] == [
        "policies.delete",
        "policies.fire",
        "policies.update",
        "policies.create",
    ]
    assert all(e["actor"].endswith(":root") and e["target_id"] == str(policy_id) for e in events["items"])
    only_create = api.client.get("/v1/audit", headers=api.viewer, params={"action": "policies.create"}).json()
    assert only_create["total"] == 1
    # A rejected request changes nothing and leaves no audit event.
    api.client.post("/v1/policies", headers=api.admin, json={"name": "bad", "triggers": ["schedule"]})
    assert (
        api.client.get("/v1/audit", headers=api.viewer, params={"action": "policies.create"}).json()["total"]
        == 1
    )
