"""The loop of issue 13, simulated end to end over real HTTP (one slow test).

A tiny teacher is registered, promoted to ``production`` and deployed to a simulated fleet of two terminals
with collection on for their group. Users drift away from their enrolment (tests/terminal/synthetic_faces);
the terminals' real agents verify them, and some impostors, and upload every attempt to
``POST /v1/device/attempts``. A scripted inspector (an ``inspector`` API key) pages through
``GET /v1/inspections?status=pending`` and labels each attempt from the ground truth it was generated with
(``unusable`` for the ruined captures); the admin exports the labelled attempts as an inspection set
(``POST /v1/inspection-sets``); a ``kind: distill`` run (teacher ``teacher@production``, a smaller student,
that set) is created through ``POST /v1/runs`` and run by the `local` launcher on Ray Train with 2 workers;
its student is deployed canary-first and reaches the canary, then every terminal, whose next attempts are
collected under the student's version. Last, one terminal's attempts are erased on request: the set the
run was trained on is kept and named in the answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from facefleet.platform import auth
from facefleet.platform.db.models import Attempt, Run
from facefleet.platform.models import service as registry
from facefleet.platform.signing import public_key_pem, verify_signature
from facefleet.terminal.fleet import SimulatedFleet, register_devices
from tests.terminal.conftest import LiveApi, live_api  # noqa: F401 - the fixture, served by uvicorn
from tests.terminal.model_factory import register_test_model, trained_backbone
from tests.terminal.synthetic_faces import face
from tests.workers.train_helpers import launch_and_wait, register_tiny_datasets, run_log

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

GROUP = "hall"
DEVICES = {"hall-0": (1, 2, 3), "hall-1": (4, 5, 6)}  # terminal -> the users enrolled on it
DRIFTS = (0.2, 0.5, 0.8)  # each enrolled user comes back three times, further from the enrolment each time
TEACHER_THRESHOLD = 0.5


def _call(http: httpx.Client, method: str, path: str, key: str, expect: int, **kwargs: Any) -> Any:
    response = http.request(method, path, headers={"Authorization": f"Bearer {key}"}, **kwargs)
    assert response.status_code == expect, f"{method} {path}: {response.status_code} {response.text}"
    return response.json()


def _generate_attempts(fleet: SimulatedFleet) -> list[str]:
    """Every terminal verifies its drifting users, impostors claiming them and one ruined capture; returns
    the ground truth in upload order (uploads are synchronous, so attempt ids follow this order)."""
    truth: list[str] = []
    for name, users in DEVICES.items():
        agent = fleet.agents[name]
        for user in users:
            for step, drift in enumerate(DRIFTS):
                agent.verify(f"u{user}", face(user, 10 + step, drift=drift))
                truth.append("genuine")
            agent.verify(f"u{user}", face(50 + user, 0))  # somebody else claims to be this user
            truth.append("impostor")
        agent.verify(f"u{users[0]}", face(users[0], 99, noise=150.0))  # a capture nobody can judge
        truth.append("unusable")
    return truth


def test_attempts_inspected_distilled_and_deployed_canary_first(live_api: LiveApi, tmp_path: Path) -> None:  # noqa: F811
    live, admin = live_api, live_api.admin_key
    with live.session() as session:
        _key, inspector = auth.create_api_key(session, name="scripted-inspector", role="inspector")
        teacher = register_test_model(
            session,
            live.store,
            tmp_path / "teacher",
            name="teacher",
            net=trained_backbone(0, steps=30),
            threshold=TEACHER_THRESHOLD,
        )
        names, verif = register_tiny_datasets(session, live.store, tmp_path / "synth")
        session.commit()
        teacher_id, teacher_version, teacher_sha = teacher.id, teacher.version, teacher.card_sha256

    http = httpx.Client(base_url=live.url, timeout=60)
    fleet = SimulatedFleet(live.url, tmp_path / "terminals")
    try:
        # 1. The teacher is the production model, deployed to the group, with collection on.
        _call(
            http,
            "PUT",
            "/v1/models/teacher/aliases/production",
            admin,
            200,
            json={"version": teacher_version},
        )
        fleet.enroll(register_devices(live.url, admin, group=GROUP, names=list(DEVICES)))
        _call(
            http, "POST", "/v1/deployments", admin, 201, json={"model_version_id": teacher_id, "group": GROUP}
        )
        assert set(fleet.poll().values()) == {"installed"}
        for name, users in DEVICES.items():
            for user in users:
                fleet.agents[name].terminal.enroll_user(f"u{user}", [face(user, 0), face(user, 1)])
        _call(
            http, "PUT", f"/v1/collection/{GROUP}", admin, 200, json={"attempts": "all", "sample_rate": 1.0}
        )
        fleet.poll()  # the terminals learn the collection settings from their assignment
        assert all(agent.collection_settings().enabled for agent in fleet.agents.values())

        # 2. Terminals verify drifting users and impostors; every attempt is uploaded.
        truth = _generate_attempts(fleet)
        per_device = len(truth) // len(DEVICES)
        for agent in fleet.agents.values():
            assert agent.collection_counters.uploaded == per_device, agent.collection_counters
            assert agent.collection_counters.refused == agent.collection_counters.failed == 0
        with live.session() as session:
            stored = list(session.scalars(select(Attempt).order_by(Attempt.id)))
        assert len(stored) == len(truth) == 26
        assert {a.model_version_id for a in stored} == {teacher_id}
        assert {a.status for a in stored} == {"pending"} and {a.threshold for a in stored} == {
            TEACHER_THRESHOLD
        }

        # 3. The scripted inspector pages through the pending attempts and labels each from ground truth.
        assert _call(http, "GET", "/v1/models", inspector, 403) is not None  # nothing but inspections
        by_id = {a.id: verdict for a, verdict in zip(stored, truth, strict=True)}
        pending: list[dict[str, Any]] = []
        after: int | None = None
        while True:
            params: dict[str, Any] = {"status": "pending", "limit": 10, **({"after": after} if after else {})}
            page = _call(http, "GET", "/v1/inspections", inspector, 200, params=params)
            pending += page["items"]
            after = page["next_after"]
            if after is None:
                break
        assert [item["id"] for item in pending] == sorted(by_id)
        for item in pending:
            probe = http.get(item["probe_url"], headers={"Authorization": f"Bearer {inspector}"})
            assert probe.status_code == 200 and probe.content.startswith(
                b"\x89PNG"
            )  # what the inspector sees
            labelled = _call(
                http,
                "POST",
                f"/v1/inspections/{item['id']}",
                inspector,
                200,
                json={"verdict": by_id[item["id"]]},
            )
            assert (labelled["status"], labelled["verdict"]) == ("labelled", by_id[item["id"]])
        assert (
            _call(http, "GET", "/v1/inspections", inspector, 200, params={"status": "pending"})["total"] == 0
        )
        labelled_total = _call(http, "GET", "/v1/inspections", inspector, 200, params={"status": "labelled"})
        assert labelled_total["total"] == 26

        # 4. The labelled attempts become an inspection set; unusable ones are left out.
        genuine, impostor = truth.count("genuine"), truth.count("impostor")
        assert (genuine, impostor, truth.count("unusable")) == (18, 6, 2)
        _call(
            http, "POST", "/v1/inspection-sets", inspector, 403, json={"name": "hall-week1", "group": GROUP}
        )
        exported = _call(
            http, "POST", "/v1/inspection-sets", admin, 201, json={"name": "hall-week1", "group": GROUP}
        )
        assert (exported["format"], exported["version"], exported["pair_count"]) == ("inspection", 1, 24)
        assert exported["image_count"] == 48
        report = exported["report"]
        assert (report["kind"], report["attempts"], report["genuine"], report["impostor"]) == (
            "inspection",
            24,
            genuine,
            impostor,
        )
        assert report["threshold"] == TEACHER_THRESHOLD and report["model_versions"] == [teacher_id]
        assert len(report["devices"]) == 2

        # 5. A distill run from the production teacher, with that set, on Ray Train with 2 workers.
        config = {
            "kind": "distill",
            "model_name": "student",
            "backbone": "tiny",
            "input_size": 24,  # terminal-sized: the teacher's is 32
            "embedding_dim": 16,  # the teacher's is 32
            "batch_size": 8,
            "steps": 6,
            "checkpoint_interval": 3,
            "metrics_interval": 2,
            "data_workers": 0,
            "eval_pairs_per_dataset": 20,
            "cache_bytes": 8 << 20,
            "optimizer": {"lr": 0.05},
            "scaling": {"num_workers": 2},
            "max_failures": 0,
            "distill": {
                "teacher": "teacher@production",
                "inspection_sets": ["hall-week1"],
                "inspection_batch": 4,
            },
        }
        body = {"datasets": names, "verification_sets": [verif], "config": config, "start": False}
        created = _call(http, "POST", "/v1/runs", admin, 201, json=body)
        run_id = int(created["id"])
        code = launch_and_wait(run_id)
        with live.session() as session:
            run = session.get(Run, run_id)
            assert run is not None
            assert (run.status, run.error, code) == ("succeeded", None, 0), run_log(run_id)
            assert run.summary["teacher"] == {"name": "teacher", "version": teacher_version}
            assert run.summary["inspection_sets"] == ["hall-week1:1"]
            assert run.summary["evaluation"]["inspection"]["hall-week1:1"]["pairs"] == 24.0
            student = registry.get_model_version(session, "student", "candidate")
            student_id = student.id
            card_bytes = live.store.get_bytes(f"models/student/{student.version}/model_card.json")
            assert verify_signature(public_key_pem(), card_bytes, student.signature or "")
        card = json.loads(card_bytes)
        distillation = card["distillation"]
        assert (distillation["teacher_name"], distillation["teacher_version"]) == ("teacher", teacher_version)
        assert distillation["teacher_card_sha256"] == teacher_sha
        assert distillation["inspection_sets"] == [
            {"name": "hall-week1", "version": 1, "attempts": 24, "genuine": genuine, "impostor": impostor}
        ]
        assert (card["input"]["size"], card["embedding_dim"]) == (24, 16)

        # 6. The student goes out canary-first: one canary terminal, then the rest.
        rollout = _call(
            http,
            "POST",
            "/v1/deployments",
            admin,
            201,
            json={
                "model_version_id": student_id,
                "group": GROUP,
                "strategy": "canary",
                "canary_percent": 50,
                "max_failure_rate": 0.0,
            },
        )
        state = _call(http, "GET", f"/v1/deployments/{rollout['id']}", admin, 200)
        canaries = [d["device_name"] for d in state["devices"] if d["phase"] == "canary"]
        rest = [name for name in DEVICES if name not in canaries]
        assert len(canaries) == 1 and len(rest) == 1 and state["stage"] == "canary"
        assert fleet.poll(rest) == {rest[0]: "idle"}  # waits for the canary
        assert _call(http, "GET", f"/v1/deployments/{rollout['id']}", admin, 200)["stage"] == "canary"
        assert fleet.poll(canaries) == {canaries[0]: "installed"}
        assert _call(http, "GET", f"/v1/deployments/{rollout['id']}", admin, 200)["stage"] == "rollout"
        assert fleet.poll(rest) == {rest[0]: "installed"}
        final = _call(http, "GET", f"/v1/deployments/{rollout['id']}", admin, 200)
        assert final["status"] == "completed" and {d["status"] for d in final["devices"]} == {"installed"}
        assert fleet.current_versions() == {name: student_id for name in DEVICES}

        # 7. The loop goes on: the student's own attempts are collected for the next round.
        agent = fleet.agents["hall-0"]
        before = agent.collection_counters.uploaded
        agent.verify("u1", face(1, 40, drift=0.8))
        assert agent.collection_counters.uploaded == before + 1
        with live.session() as session:
            latest = session.scalars(select(Attempt).order_by(Attempt.id.desc()).limit(1)).one()
            assert (latest.model_version_id, latest.status) == (student_id, "pending")
            assert latest.threshold == pytest.approx(card["threshold"])

        # 8. Erasure on request: hall-0's attempts go; the set the run was trained on is kept and named.
        device_id = fleet.agents["hall-0"].terminal.require_identity().device_id
        erased = _call(http, "DELETE", "/v1/inspections", admin, 200, params={"device": device_id})
        assert erased == {
            "device_id": device_id,
            "deleted": per_device + 1,
            "inspection_sets_deleted": [],
            "inspection_sets_kept": ["hall-week1:1"],
        }
    finally:
        fleet.close()
        http.close()
