"""/v1/policies: CRUD, validation of impossible policies, fire now."""

from __future__ import annotations

from tests.api.conftest import Api


def test_policy_crud_and_fire(api: Api) -> None:
    body = {
        "name": "faces-nightly",
        "triggers": ["dataset_added", "schedule"],
        "cron": "0 3 * * *",
        "dataset_selector": {"glob": "faces-*", "tags": ["asia"]},
        "debounce_seconds": 60,
        "base_config": {"backbone": "tiny", "steps": 5},
        "notify": {"webhooks": ["http://127.0.0.1:9/hook"]},
    }
    created = api.client.post("/v1/policies", headers=api.admin, json=body)
    assert created.status_code == 201, created.text
    policy = created.json()
    assert policy["next_cron_at"] and policy["base_config"] == {
        "backbone": "tiny",
        "steps": 5,
        "model_name": "facefleet",
    }
    assert api.client.post("/v1/policies", headers=api.admin, json=body).status_code == 409
    got = api.client.get(f"/v1/policies/{policy['id']}", headers=api.viewer).json()
    assert got["dataset_selector"] == {"names": [], "glob": "faces-*", "tags": ["asia"]}

    patched = api.client.patch(f"/v1/policies/{policy['id']}", headers=api.admin, json={"enabled": False})
    assert patched.status_code == 200 and patched.json()["enabled"] is False
    disabled = api.client.post(f"/v1/policies/{policy['id']}:fire", headers=api.admin)
    assert disabled.status_code == 409 and "enable" in disabled.json()["detail"]
    api.client.patch(f"/v1/policies/{policy['id']}", headers=api.admin, json={"enabled": True})
    fired = api.client.post(f"/v1/policies/{policy['id']}/fire", headers=api.admin)
    assert fired.status_code == 202 and fired.json()["pending_trigger"] == "manual"
    assert fired.json()["pending_events"][0]["requested_by"].endswith(":root")

    assert api.client.get("/v1/policies", headers=api.viewer, params={"enabled": False}).json()["total"] == 0
    assert api.client.delete(f"/v1/policies/{policy['id']}", headers=api.admin).status_code == 204
    assert api.client.get(f"/v1/policies/{policy['id']}", headers=api.viewer).status_code == 404
    assert api.client.post("/v1/policies/999:fire", headers=api.admin).status_code == 404


def test_impossible_policies_are_rejected(api: Api) -> None:
    def post(**fields: object) -> dict:
        response = api.client.post("/v1/policies", headers=api.admin, json={"name": "p", **fields})
        assert response.status_code == 422, response.text
        return response.json()

    assert "cron" in post(triggers=["schedule"])["detail"]
    assert "cron expression" in post(triggers=["schedule"], cron="every day")["detail"]
    assert "metric_threshold" in post(triggers=["metric_drop"], verification_sets=["lfw"])["detail"]
    assert post(triggers=["nightly"])["field"].startswith("triggers")
    assert post(triggers=["manual"], notify={"webhooks": ["ftp://x"]})["field"] == "notify.webhooks"
    assert post(triggers=[])["field"] == "triggers"
    created = api.client.post("/v1/policies", headers=api.admin, json={"name": "ok", "triggers": ["manual"]})
    patched = api.client.patch(
        f"/v1/policies/{created.json()['id']}", headers=api.admin, json={"triggers": ["schedule"]}
    )
    assert patched.status_code == 422 and "cron" in patched.json()["detail"]
