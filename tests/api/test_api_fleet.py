"""Fleet-scale paths: the assignment's ETag/304, one-statement heartbeats, keyset pages and bounded counts."""

from __future__ import annotations

from sqlalchemy import select

from bench._support import unsigned_model_version
from facefleet.api.device_fastpath import DeviceFastPath
from facefleet.platform.db.models import Device
from facefleet.platform.db.paging import bounded_count
from tests.api.conftest import Api


def enrolled_device(api: Api, name: str, group: str = "lobby") -> dict[str, str]:
    registered = api.client.post("/v1/devices", headers=api.admin, json={"name": name, "group": group})
    assert registered.status_code == 201, registered.text
    token = registered.json()["enrollment_token"]
    enrolled = api.client.post("/v1/device/enroll", json={"token": token})
    assert enrolled.status_code == 200, enrolled.text
    return {"Authorization": f"Bearer {enrolled.json()['credential']}"}


def signed_version(api: Api, name: str = "m", version: int = 1) -> int:
    """A model version as the registry leaves it: a card in the store, artifacts listed, a signature."""
    card = f'{{"name": "{name}", "version": {version}}}'.encode()
    with api.session() as session:
        row = unsigned_model_version(
            session,
            api.store,
            name,
            version,
            card=card,
            onnx=b"not really onnx",
            signature="c2lnbmF0dXJl",
            eval_summary={},
        )
        session.commit()
        return row.id


def test_unchanged_assignment_is_a_304_and_any_change_a_new_etag(api: Api) -> None:
    device = enrolled_device(api, "t1")
    first = api.client.get("/v1/device/assignment", headers=device)
    assert first.status_code == 200 and first.json()["action"] == "none"
    idle_tag = first.headers["ETag"]
    again = api.client.get("/v1/device/assignment", headers={**device, "If-None-Match": idle_tag})
    assert again.status_code == 304 and again.content == b"" and again.headers["ETag"] == idle_tag

    version_id = signed_version(api)
    deployed = api.client.post(
        "/v1/deployments", headers=api.admin, json={"model_version_id": version_id, "group": "lobby"}
    )
    assert deployed.status_code == 201, deployed.text
    # The old tag no longer matches: a full answer with the model and a new tag.
    changed = api.client.get("/v1/device/assignment", headers={**device, "If-None-Match": idle_tag})
    assert changed.status_code == 200 and changed.json()["action"] == "install"
    assert changed.json()["model"]["model_version_id"] == version_id
    install_tag = changed.headers["ETag"]
    assert install_tag != idle_tag
    for sent in (install_tag, f"W/{install_tag}", f'"other", {install_tag}', "*"):
        unchanged = api.client.get("/v1/device/assignment", headers={**device, "If-None-Match": sent})
        assert unchanged.status_code == 304, sent

    # Progress changes the state, so the tag: the status answer carries the new one.
    report = api.client.post(
        "/v1/device/status",
        headers=device,
        json={"deployment_id": deployed.json()["id"], "status": "downloading"},
    )
    assert report.status_code == 200 and report.json()["status"] == "downloading"
    assert report.headers["ETag"] not in (install_tag, idle_tag)
    stale = api.client.get("/v1/device/assignment", headers={**device, "If-None-Match": install_tag})
    assert stale.status_code == 200 and stale.json()["status"] == "downloading"
    assert stale.headers["ETag"] == report.headers["ETag"]
    # The cached model part is the same bytes as the first rendering.
    assert stale.json()["model"] == changed.json()["model"]


def test_a_paced_deployment_hands_the_model_out_in_turn(api: Api) -> None:
    """One device a minute: the first terminal gets it at once, the second waits (same ETag, a 304)."""
    first, second = enrolled_device(api, "p1"), enrolled_device(api, "p2")
    waiting_tag = api.client.get("/v1/device/assignment", headers=second).headers["ETag"]
    deployed = api.client.post(
        "/v1/deployments",
        headers=api.admin,
        json={"model_version_id": signed_version(api), "group": "lobby", "release_per_minute": 1},
    )
    assert deployed.status_code == 201, deployed.text
    body = deployed.json()
    assert body["release_per_minute"] == 1
    # the answer counts the devices instead of listing them; their rows are a paged route of their own
    assert body["devices"] is None and body["device_count"] == 2
    assert body["device_counts"] == {"all": {"pending": 2}}
    rows = api.client.get(f"/v1/deployments/{body['id']}/devices", headers=api.admin).json()["items"]
    assert [d["released"] for d in rows] == [True, False]
    assert api.client.get("/v1/device/assignment", headers=first).json()["action"] == "install"
    turn = api.client.get("/v1/device/assignment", headers=second)
    assert turn.status_code == 200 and turn.json()["action"] == "none" and turn.json()["status"] == "pending"
    again = api.client.get("/v1/device/assignment", headers={**second, "If-None-Match": turn.headers["ETag"]})
    assert again.status_code == 304
    assert turn.headers["ETag"] != waiting_tag  # it is in a deployment now, only not its turn


def test_deployment_lists_count_devices_and_their_rows_come_a_page_at_a_time(api: Api) -> None:
    """Lists and the create answer stay one size whatever the group's; the rows are paged by device id."""
    names = [f"d{i}" for i in range(5)]
    for name in names:
        enrolled_device(api, name)
    created = api.client.post(
        "/v1/deployments",
        headers=api.admin,
        json={
            "model_version_id": signed_version(api),
            "group": "lobby",
            "strategy": "canary",
            "canary_percent": 40,
        },
    ).json()
    assert created["devices"] is None and created["device_count"] == 5 and created["stage"] == "canary"
    assert created["device_counts"] == {"canary": {"pending": 2}, "rest": {"pending": 3}}
    listed = api.client.get("/v1/deployments", headers=api.admin).json()["items"]
    assert [(d["id"], d["device_count"], d["devices"]) for d in listed] == [(created["id"], 5, None)]
    detail = api.client.get(f"/v1/deployments/{created['id']}", headers=api.admin).json()
    assert len(detail["devices"]) == 5 and detail["device_counts"] == created["device_counts"]
    counted = api.client.get(
        f"/v1/deployments/{created['id']}", headers=api.admin, params={"devices": "false"}
    )
    assert counted.json() == {**detail, "devices": None}

    seen: list[str] = []
    params: dict[str, object] = {"limit": 2}
    while True:
        page = api.client.get(f"/v1/deployments/{created['id']}/devices", headers=api.admin, params=params)
        assert page.status_code == 200, page.text
        seen += [row["device_name"] for row in page.json()["items"]]
        if page.json()["next_after"] is None:
            break
        params["after"] = page.json()["next_after"]
    assert seen == [row["device_name"] for row in detail["devices"]] and sorted(seen) == names
    canaries = api.client.get(
        f"/v1/deployments/{created['id']}/devices", headers=api.admin, params={"phase": "canary"}
    ).json()
    assert canaries["total"] == 2 and {row["phase"] for row in canaries["items"]} == {"canary"}
    assert all(row["released"] for row in canaries["items"])
    rest = api.client.get(
        f"/v1/deployments/{created['id']}/devices",
        headers=api.admin,
        params={"phase": "rest", "status": "pending"},
    ).json()
    assert rest["total"] == 3 and not any(row["released"] for row in rest["items"])  # canaries first

    missing = api.client.get("/v1/deployments/999999/devices", headers=api.admin)
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    bad = api.client.get(
        f"/v1/deployments/{created['id']}/devices", headers=api.admin, params={"status": "done"}
    )
    assert bad.status_code == 422 and "status" in bad.text
    device = enrolled_device(api, "intruder")
    assert api.client.get(f"/v1/deployments/{created['id']}/devices", headers=device).status_code == 403


def test_heartbeat_is_one_write_and_refuses_unknown_and_disabled(api: Api) -> None:
    device = enrolled_device(api, "t2")
    body = {"agent_version": "9.9", "model_version_id": None, "health": {"users": 3}}
    beat = api.client.post("/v1/device/heartbeat", headers=device, json=body)
    assert beat.status_code == 200, beat.text
    assert beat.json()["status"] == "active" and beat.json()["adaptation_enabled"] is False
    with api.session() as session:
        row = session.scalars(select(Device).where(Device.name == "t2")).one()
        assert row.agent_version == "9.9" and row.health == {"users": 3} and row.last_seen_at is not None
        device_id = row.id
    unknown = api.client.post("/v1/device/heartbeat", headers={"Authorization": "Bearer ffd_nope"}, json=body)
    assert unknown.status_code == 401 and unknown.headers["content-type"] == "application/problem+json"
    assert api.client.post(f"/v1/devices/{device_id}/disable", headers=api.admin).status_code == 200
    disabled = api.client.post("/v1/device/heartbeat", headers=device, json=body)
    assert disabled.status_code == 403 and "disabled" in disabled.json()["detail"]
    with api.session() as session:  # the refused heartbeat wrote nothing
        assert session.get(Device, device_id).health == {"users": 3}  # type: ignore[union-attr]


def test_keyset_pages_walk_every_device_once_and_counts_are_bounded(api: Api) -> None:
    names = [f"k{i}" for i in range(7)]
    for name in names:
        assert (
            api.client.post("/v1/devices", headers=api.admin, json={"name": name, "group": "g"}).status_code
            == 201
        )
    seen: list[str] = []
    params: dict[str, object] = {"limit": 3, "group": "g"}
    pages = 0
    while True:
        page = api.client.get("/v1/devices", headers=api.admin, params=params).json()  # admin-only route
        pages += 1
        assert page["total"] == 7
        seen += [item["name"] for item in page["items"]]
        if page["next_after"] is None:
            break
        params = {"limit": 3, "group": "g", "after": page["next_after"]}
    assert seen == names and pages == 3
    # Offsets still work, and a short last page needs no count to know the total.
    tail = api.client.get("/v1/devices", headers=api.admin, params={"limit": 5, "offset": 5}).json()
    assert (
        [i["name"] for i in tail["items"]] == names[5:] and tail["total"] == 7 and tail["next_after"] is None
    )
    # Newest-first lists page backwards by id.
    audit = api.client.get("/v1/audit", headers=api.viewer, params={"limit": 2}).json()
    ids = [e["id"] for e in audit["items"]]
    older = api.client.get(
        "/v1/audit", headers=api.viewer, params={"limit": 2, "after": audit["next_after"]}
    ).json()
    assert ids == sorted(ids, reverse=True) and all(e["id"] < ids[-1] for e in older["items"])
    bad = api.client.get("/v1/devices", headers=api.admin, params={"after": -1})
    assert bad.status_code == 422 and bad.json()["field"] == "after"
    # Past the cap the count is not taken: null, and clients follow next_after.
    with api.session() as session:
        assert bounded_count(session, select(Device), cap=7) == 7
        assert bounded_count(session, select(Device), cap=6) is None
        assert bounded_count(session, select(Device).where(Device.group == "none"), cap=6) == 0


def _fast_path(api: Api) -> DeviceFastPath:
    """The app's DeviceFastPath middleware instance (the stack is built on the first request)."""
    layer: object = api.client.app.middleware_stack  # type: ignore[attr-defined]
    while not isinstance(layer, DeviceFastPath):
        layer = layer.app  # type: ignore[attr-defined]
    return layer


def test_disabled_or_reissued_credentials_are_refused_on_the_next_request(api: Api) -> None:
    """The credential is looked up on every poll, heartbeat and status report: nothing caches it."""
    device = enrolled_device(api, "r1")
    beat = {"agent_version": "1", "model_version_id": None, "health": {}}
    status = {"deployment_id": 1, "status": "downloading"}
    assert api.client.get("/v1/device/assignment", headers=device).status_code == 200
    assert api.client.post("/v1/device/heartbeat", headers=device, json=beat).status_code == 200
    device_id = api.client.post("/v1/device/heartbeat", headers=device, json=beat).json()["device_id"]
    assert api.client.post(f"/v1/devices/{device_id}/disable", headers=api.admin).status_code == 200
    for response in (
        api.client.get("/v1/device/assignment", headers=device),
        api.client.post("/v1/device/heartbeat", headers=device, json=beat),
        api.client.post("/v1/device/status", headers=device, json=status),
    ):
        assert response.status_code == 403 and "disabled" in response.json()["detail"]
        assert response.headers["content-type"] == "application/problem+json"

    other = enrolled_device(api, "r2")
    assert api.client.get("/v1/device/assignment", headers=other).status_code == 200
    other_id = api.client.post("/v1/device/heartbeat", headers=other, json=beat).json()["device_id"]
    assert api.client.post(f"/v1/devices/{other_id}/enrollment-token", headers=api.admin).status_code == 200
    for response in (
        api.client.get("/v1/device/assignment", headers=other),
        api.client.post("/v1/device/heartbeat", headers=other, json=beat),
        api.client.post("/v1/device/status", headers=other, json=status),
    ):
        assert response.status_code == 401, response.text


def test_fast_path_answers_successes_and_leaves_every_refusal_to_the_route(api: Api) -> None:
    device = enrolled_device(api, "f1")
    fast = _fast_path(api)
    before = fast.fallbacks
    beat = {"agent_version": "1", "model_version_id": None, "health": {"users": 1}}
    first = api.client.get("/v1/device/assignment", headers=device)
    again = api.client.get(
        "/v1/device/assignment", headers={**device, "If-None-Match": first.headers["ETag"]}
    )
    assert (first.status_code, again.status_code) == (200, 304)
    assert api.client.post("/v1/device/heartbeat", headers=device, json=beat).status_code == 200
    assert fast.fallbacks == before  # all three answered without FastAPI's routing

    refusals = [
        (api.client.get("/v1/device/assignment"), 401),
        (api.client.get("/v1/device/assignment", headers=api.admin), 403),  # an API key
        (api.client.get("/v1/device/assignment", headers={**device, "If-None-Match": "x" * 2000}), 422),
        (api.client.post("/v1/device/heartbeat", headers=device, content=b"{not json"), 422),
        (api.client.post("/v1/device/heartbeat", headers=device, json={**beat, "extra": 1}), 422),
        (
            api.client.post(
                "/v1/device/status", headers=device, json={"deployment_id": 99, "status": "installed"}
            ),
            404,
        ),
    ]
    for response, expected in refusals:
        assert response.status_code == expected, response.text
        assert response.headers["content-type"] == "application/problem+json"
    assert fast.fallbacks == before + len(refusals)
