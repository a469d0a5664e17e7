"""/v1/models: list, versions, aliases, streamed artifact download, promotion (audited and notified)."""

from __future__ import annotations

import hashlib

from sqlalchemy import select

from facefleet.platform.db.models import Notification
from tests.api.conftest import Api, add_model_version


def test_models_versions_download_and_promote(api: Api, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(api.client.app.state.settings, "notify_webhooks", ["http://127.0.0.1:9/hook"])  # type: ignore[attr-defined]
    add_model_version(api, "faces", 1)
    add_model_version(api, "faces", 2)
    models = api.client.get("/v1/models", headers=api.viewer).json()
    assert models["items"] == [{"name": "faces", "latest_version": 2, "versions": 2, "aliases": {}}]
    versions = api.client.get("/v1/models/faces/versions", headers=api.viewer, params={"limit": 1}).json()
    assert versions["total"] == 2 and versions["items"][0]["version"] == 2
    assert api.client.get("/v1/models/nope/versions", headers=api.viewer).status_code == 404

    download = api.client.get("/v1/models/faces/versions/2/artifacts/model.onnx", headers=api.viewer)
    assert download.status_code == 200
    assert hashlib.sha256(download.content).hexdigest() == download.headers["x-checksum-sha256"]
    assert download.content == api.store.get_bytes("models/faces/2/model.onnx")
    missing = api.client.get("/v1/models/faces/versions/2/artifacts/model.pt", headers=api.viewer)
    assert missing.status_code == 404 and "model.onnx" in missing.json()["detail"]

    assert api.client.post("/v1/models/faces/versions/1:promote", headers=api.viewer).status_code == 403
    promoted = api.client.post("/v1/models/faces/versions/1:promote", headers=api.admin)
    assert promoted.status_code == 200 and promoted.json()["aliases"] == ["production"]
    assert api.client.get("/v1/models/faces/versions/production", headers=api.viewer).json()["version"] == 1
    moved = api.client.put("/v1/models/faces/aliases/production", headers=api.admin, json={"version": 2})
    assert moved.status_code == 200
    staged = api.client.post(
        "/v1/models/faces/versions/1/promote", headers=api.admin, json={"alias": "staging"}
    )
    assert staged.json()["aliases"] == ["staging"]
    aliases = api.client.get("/v1/models/faces/aliases", headers=api.viewer).json()
    assert aliases["aliases"] == {"production": 2, "staging": 1}
    bad_alias = api.client.put("/v1/models/faces/aliases/Bad Alias", headers=api.admin, json={"version": 1})
    assert bad_alias.status_code == 422 and bad_alias.json()["field"] == "alias"
    assert (
        api.client.put("/v1/models/faces/aliases/x", headers=api.admin, json={"version": 9}).status_code
        == 404
    )
    extra = api.client.put("/v1/models/faces/aliases/x", headers=api.admin, json={"version": 1, "why": "?"})
    assert extra.status_code == 422 and extra.json()["field"] == "why"

    events = api.client.get("/v1/audit", headers=api.viewer, params={"action": "models.promote"}).json()
    assert [e["details"]["to"] for e in events["items"]] == [2, 1]
    with api.session() as session:
        notes = session.scalars(select(Notification).order_by(Notification.id)).all()
        assert [(n.event, n.payload["to"]) for n in notes] == [("model.promoted", 1), ("model.promoted", 2)]
