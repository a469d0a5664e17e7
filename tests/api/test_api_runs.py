"""/v1/runs: create (validated), list with filters, show, metrics JSON/CSV, plots, logs, cancel."""

from __future__ import annotations

from facefleet.platform.runs import service
from facefleet.platform.settings import get_settings
from tests.api.conftest import Api, register_folder

TINY = {"backbone": "tiny", "steps": 2, "reversal": {"enabled": False}}


def test_create_show_list_and_cancel(api: Api) -> None:
    register_folder(api, "faces-a", seed=1)
    register_folder(api, "faces-b", seed=2)
    register_folder(api, "lfw", kind="verification")
    response = api.client.post(
        "/v1/runs",
        headers=api.admin,
        json={
            "datasets": ["faces-a", "faces-b:1"],
            "verification_sets": ["lfw"],
            "config": TINY,
            "name": "ab",
        },
    )
    assert response.status_code == 201, response.text
    run = response.json()
    assert run["status"] == "queued" and run["launcher_job_id"] == f"test-job-{run['id']}"
    assert api.starter.started == [run["id"]]
    assert [(d["dataset"], d["role"], d["class_offset"]) for d in run["datasets"]] == [
        ("faces-a", "train", 0),
        ("faces-b", "train", 3),
        ("lfw", "verification", 0),
    ]
    queued = api.client.post(
        "/v1/runs", headers=api.admin, json={"datasets": ["faces-a"], "config": TINY, "start": False}
    ).json()

    assert api.client.get(f"/v1/runs/{run['id']}", headers=api.viewer).json()["name"] == "ab"
    listed = api.client.get("/v1/runs", headers=api.viewer, params={"status": "queued", "limit": 1}).json()
    assert listed["total"] == 2 and [r["id"] for r in listed["items"]] == [queued["id"]]
    assert api.client.get("/v1/runs", headers=api.viewer, params={"trigger": "schedule"}).json()["total"] == 0
    assert api.client.get("/v1/runs", headers=api.viewer, params={"status": "nope"}).status_code == 422

    cancelled = api.client.post(f"/v1/runs/{queued['id']}:cancel", headers=api.admin)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = api.client.post(f"/v1/runs/{queued['id']}/cancel", headers=api.admin)
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    assert api.client.post("/v1/runs/9999:cancel", headers=api.admin).status_code == 404
    assert api.client.get("/v1/runs/9999", headers=api.viewer).status_code == 404


def test_impossible_configs_and_datasets_are_422_with_the_field(api: Api) -> None:
    register_folder(api, "faces-a")

    def post(body: dict) -> dict:
        response = api.client.post("/v1/runs", headers=api.admin, json={"start": False, **body})
        assert response.status_code in (404, 422), response.text
        return response.json()

    assert (
        post({"datasets": ["faces-a"], "config": {"backbone": "tiny", "steps": 2}})["field"]
        == "config.reversal.enabled"
    )
    assert post({"datasets": ["faces-a"], "config": {"backbone": "nope"}})["field"] == "config.backbone"
    assert post({"datasets": ["faces-a"], "config": {"batch_size": "big"}})["field"] == "config.batch_size"
    assert post({"datasets": ["faces-a"], "config": {"bogus": 1}})["field"] == "config.bogus"
    assert post({"datasets": []})["field"] == "datasets"
    assert post({"datasets": ["missing"], "config": TINY})["field"] == "datasets"
    assert post({"datasets": ["faces-a"], "config": TINY, "gpus": 2})["field"] == "gpus"
    assert api.client.get("/v1/runs", headers=api.viewer).json()["total"] == 0


def test_sharded_heads_that_cannot_run_are_422_before_queueing(api: Api) -> None:
    register_folder(api, "faces-a")  # 3 identities

    def post(config: dict) -> dict:
        body = {"datasets": ["faces-a"], "config": {**TINY, **config}, "start": False}
        response = api.client.post("/v1/runs", headers=api.admin, json=body)
        assert response.status_code == 422, response.text
        return response.json()

    assert (
        "every shard needs at least one class"
        in post(
            # 4 workers x 0.5 CPU: within a 2-core machine, so the shard check (not the CPU check) refuses it
            {"head": {"sharded": True}, "scaling": {"num_workers": 4, "cpus_per_worker": 0.5}}
        )["detail"]
    )
    assert "num_workers >= 2" in post({"head": {"sharded": True}, "scaling": {"num_workers": 1}})["detail"]
    assert post({"head": {"sharded": True, "sample_rate": 0}, "scaling": {"num_workers": 2}})["field"] == (
        "config.head.sample_rate"
    )
    assert api.client.get("/v1/runs", headers=api.viewer).json()["total"] == 0


def test_metrics_plots_and_logs(api: Api) -> None:
    register_folder(api, "faces-a")
    run = api.client.post(
        "/v1/runs", headers=api.admin, json={"datasets": ["faces-a"], "config": TINY, "start": False}
    ).json()
    with api.session() as session:
        service.record_metrics(session, run["id"], 1, {"loss": 2.5, "lr": 0.1})
        service.record_metrics(session, run["id"], 2, {"loss": 1.5})
        session.commit()
    metrics = api.client.get(f"/v1/runs/{run['id']}/metrics", headers=api.viewer).json()
    assert [p["value"] for p in metrics["series"]["loss"]] == [2.5, 1.5]
    only = api.client.get(f"/v1/runs/{run['id']}/metrics", headers=api.viewer, params={"names": "lr"}).json()
    assert list(only["series"]) == ["lr"]
    csv = api.client.get(f"/v1/runs/{run['id']}/metrics", headers=api.viewer, params={"format": "csv"})
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines() == ["step,name,value", "1,loss,2.5", "2,loss,1.5", "1,lr,0.1"]

    api.store.put_bytes(f"runs/{run['id']}/plots/loss.png", b"\x89PNG fake")
    plots = api.client.get(f"/v1/runs/{run['id']}/plots", headers=api.viewer).json()
    assert plots["plots"] == ["loss.png"]
    png = api.client.get(f"/v1/runs/{run['id']}/plots/loss.png", headers=api.viewer)
    assert png.content == b"\x89PNG fake" and png.headers["content-type"] == "image/png"
    assert api.client.get(f"/v1/runs/{run['id']}/plots/roc.png", headers=api.viewer).status_code == 404
    assert api.client.get(f"/v1/runs/{run['id']}/plots/%2E%2E", headers=api.viewer).status_code in (404, 422)

    assert api.client.get(f"/v1/runs/{run['id']}/logs", headers=api.viewer).status_code == 404
    log_path = get_settings().data_dir.resolve() / "runs" / f"{run['id']}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text("".join(f"line {i}\n" for i in range(10)))
    logs = api.client.get(f"/v1/runs/{run['id']}/logs", headers=api.viewer, params={"tail": 2})
    assert logs.text == "line 8\nline 9\n"
