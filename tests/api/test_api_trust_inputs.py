"""Issue 11, items 6-9: numbers out of range or sense, configs the launcher cannot run, names with NUL,
and the admin-only fleet routes. Each is a 4xx problem naming the field; nothing is written."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import select

from facefleet.platform.db.models import Run
from tests.api.conftest import Api, register_folder
from tests.api.test_api_bad_input import assert_problem, counts

TINY = {"backbone": "tiny", "steps": 2, "reversal": {"enabled": False}}


def _run(api: Api, config: dict | str) -> dict:
    if isinstance(config, str):  # raw JSON text: numbers Python's json module cannot write (1e309)
        content = '{"datasets": ["faces"], "start": false, "config": ' + config + "}"
        headers = {**api.admin, "Content-Type": "application/json"}
        response = api.client.post("/v1/runs", headers=headers, content=content)
    else:
        body = {"datasets": ["faces"], "start": False, "config": {**TINY, **config}}
        response = api.client.post("/v1/runs", headers=api.admin, json=body)
    assert response.status_code != 500, response.text
    return {"status_code": response.status_code, **response.json()}


def test_numbers_past_the_database_or_sense_are_422(api: Api) -> None:
    register_folder(api, "faces")
    before = counts(api)
    cases = [
        ({"steps": 99999999999999999999}, "config.steps"),
        ({"steps": 10**9 + 1}, "config.steps"),
        ('{"backbone": "tiny", "reversal": {"enabled": false}, "head": {"s": 1e309}}', "config.head.s"),
        ({"head": {"s": 1025.0}}, "config.head.s"),
        ({"scaling": {"cpus_per_worker": 1e300}}, "config.scaling.cpus_per_worker"),
        ({"seed": -1}, "config.seed"),
        ({"seed": 2**64}, "config.seed"),
        ({"batch_size": 2**63}, "config.batch_size"),
        ({"optimizer": {"lr": 1e308}}, "config.optimizer.lr"),
        ({"schedule": {"step_milestones": [0.5, 7.0]}}, "config.schedule.step_milestones.1"),
        ('{"backbone": "tiny", "reversal": {"enabled": false}, "epochs": 1e309}', "config.epochs"),
    ]
    for config, field in cases:
        body = _run(api, config)
        assert body["status_code"] == 422 and body["field"] == field, (config, body)
    assert counts(api) == before


def test_epochs_that_come_to_too_many_steps_are_refused() -> None:
    from facefleet.platform.errors import InvalidInputError
    from facefleet.platform.runs.schemas import TrainingConfig
    from facefleet.platform.runs.service import total_steps_for

    config = TrainingConfig(steps=None, epochs=99_999.0, batch_size=2)
    with pytest.raises(InvalidInputError, match="more than 1000000000") as caught:
        total_steps_for(config, image_count=100_000)
    assert caught.value.field == "epochs"


def test_the_local_launcher_refuses_what_this_machine_cannot_run(api: Api) -> None:
    register_folder(api, "faces")
    before = counts(api)
    cpus = os.cpu_count() or 1
    too_many = _run(api, {"scaling": {"num_workers": 10_000}})
    assert too_many["status_code"] == 422 and too_many["field"] == "config.scaling.num_workers"
    assert f"this machine has {cpus}" in too_many["detail"]
    fat = _run(api, {"scaling": {"num_workers": 1, "cpus_per_worker": cpus + 1}})
    assert fat["status_code"] == 422 and "CPUs" in fat["detail"]
    assert _run(api, {"scaling": {"num_workers": 1, "gpus_per_worker": 64}})["status_code"] == 422
    assert counts(api) == before
    fits = _run(api, {"scaling": {"num_workers": 1, "cpus_per_worker": 1}})
    assert fits["status_code"] == 201


def test_a_cluster_launcher_takes_what_this_machine_lacks(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    from facefleet.platform.settings import get_settings

    register_folder(api, "faces")
    monkeypatch.setenv("FACEFLEET_LAUNCHER", "ray")
    monkeypatch.setenv("FACEFLEET_RAY_ADDRESS", "http://127.0.0.1:1")  # never contacted: not started
    monkeypatch.setenv("FACEFLEET_RAY_PREFLIGHT", "false")
    get_settings.cache_clear()
    body = _run(api, {"scaling": {"num_workers": 64, "cpus_per_worker": 4}})
    assert body["status_code"] == 201, body
    with api.session() as session:
        assert session.scalar(select(Run.launcher)) == "ray"


def test_names_with_control_characters_are_422_everywhere(api: Api) -> None:
    register_folder(api, "faces")
    before = counts(api)
    for name in ("ci\u0000bot", "ci\nbot", "ci bot", "", "k" * 129):
        key = api.client.post("/v1/keys", headers=api.admin, json={"name": name, "role": "viewer"})
        assert_problem(key, 422, "name")
    run = api.client.post(
        "/v1/runs", headers=api.admin, json={"datasets": ["faces"], "name": "a\u0000b", "start": False}
    )
    assert_problem(run, 422, "name")
    for path, body in (
        ("/v1/devices", {"name": "kiosk\u0000", "group": "front"}),
        ("/v1/devices", {"name": "kiosk", "group": "front\u0000"}),
        ("/v1/policies", {"name": "p\u0000", "triggers": ["manual"]}),
        ("/v1/datasets", {"name": "faces\u0000", "source": str(api.tmp)}),
        ("/v1/datasets", {"name": "faces", "source": str(api.tmp) + "\u0000"}),
    ):
        response = api.client.post(path, headers=api.admin, json=body)
        assert response.status_code == 422, (path, body, response.text)
        assert_problem(response, 422)
    after = counts(api)
    assert after.pop("AuditEvent") == before.pop("AuditEvent") + 1  # the refused dataset source is audited
    assert after == before


def test_viewer_keys_cannot_read_devices_or_deployments(api: Api) -> None:
    """README: devices and deployments are admin only, reads included."""
    for path in ("/v1/devices", "/v1/devices/1", "/v1/deployments", "/v1/deployments/1"):
        denied = api.client.get(path, headers=api.viewer)
        assert_problem(denied, 403, "Authorization")
        assert "admin key" in denied.json()["detail"]
        assert api.client.get(path, headers=api.admin).status_code in (200, 404)
