"""The agent against the real API: it follows the assignment's collection settings and uploads the attempts
they select (probe crop + the claimed user's enrolled crop, score, decision, threshold, model version)."""

from __future__ import annotations

import io
import random
import re
from pathlib import Path
from typing import Any

import httpx
from PIL import Image
from sqlalchemy import select

from facefleet.platform.db.models import Attempt
from facefleet.terminal import collection
from facefleet.terminal.agent import TerminalAgent
from facefleet.terminal.fleet import SimulatedFleet, register_devices
from facefleet.terminal.local import to_png
from tests.terminal.conftest import LiveApi
from tests.terminal.model_factory import register_test_model
from tests.terminal.synthetic_faces import face


def _set_collection(live: LiveApi, **settings: Any) -> None:
    response = httpx.put(
        f"{live.url}/v1/collection/lobby",
        headers={"Authorization": f"Bearer {live.admin_key}"},
        json=settings,
    )
    assert response.status_code == 200, response.text


def _attempts(live: LiveApi) -> list[Attempt]:
    with live.session() as session:
        return list(session.scalars(select(Attempt).order_by(Attempt.id)))


def _ready_agent(live: LiveApi, tmp_path: Path) -> tuple[SimulatedFleet, TerminalAgent, int]:
    tokens = register_devices(live.url, live.admin_key, group="lobby", names=["door-1"])
    fleet = SimulatedFleet(live.url, tmp_path / "terminals")
    fleet.enroll(tokens)
    with live.session() as session:
        version = register_test_model(session, live.store, tmp_path / "m1", threshold=0.5)
        session.commit()
        version_id = version.id
    deployed = httpx.post(
        f"{live.url}/v1/deployments",
        headers={"Authorization": f"Bearer {live.admin_key}"},
        json={"model_version_id": version_id, "group": "lobby"},
    )
    assert deployed.status_code == 201, deployed.text
    assert fleet.poll() == {"door-1": "installed"}
    agent = fleet.agents["door-1"]
    agent.rng = random.Random(0)
    agent.terminal.enroll_user("alice", [face(1, 0), face(1, 1)])
    return fleet, agent, version_id


def test_nothing_leaves_the_terminal_until_collection_is_on(live_api: LiveApi, tmp_path: Path) -> None:
    fleet, agent, version_id = _ready_agent(live_api, tmp_path)
    try:
        for capture in range(3):
            agent.verify("alice", face(1, 5 + capture))
            agent.verify("alice", face(2, capture))  # an impostor
        assert _attempts(live_api) == [] and agent.collection_counters.uploaded == 0
        assert not agent.collection_settings().enabled

        _set_collection(live_api, attempts="all", sample_rate=1.0)
        assert not agent.collection_settings().enabled  # the terminal learns it at its next poll
        fleet.poll()
        assert agent.collection_settings() == collection.CollectionSettings(
            enabled=True, sample_rate=1.0, attempts="all", near_threshold_band=0.05
        )
        result = agent.verify("alice", face(1, 7))
        (stored,) = _attempts(live_api)
        assert (stored.user, stored.model_version_id, stored.threshold) == ("alice", version_id, 0.5)
        assert abs(stored.score - result.score) < 1e-6
        assert stored.decision == ("accept" if result.match else "reject")
        model = agent.terminal.current_model()
        assert model is not None
        probe = Image.open(io.BytesIO(live_api.store.get_bytes(stored.probe_key)))
        assert probe.size == (model.input_size, model.input_size)  # the crop the model saw
        sample = agent.terminal.db.sample(result.sample_id or 0)
        assert sample is not None and sample.user == "alice"
        assert live_api.store.get_bytes(stored.reference_key) == collection.face_crop_png(model, sample.image)
        assert re.fullmatch(
            rf"attempts/{stored.device_id}/{stored.id}/[0-9a-f]{{16}}/probe\.png", stored.probe_key
        )

        _set_collection(live_api, attempts="rejections", sample_rate=1.0)
        fleet.poll()
        outcomes = [agent.verify("alice", face(user, 9)) for user in (1, 2, 3)]
        rejected = sum(1 for r in outcomes if not r.match)
        assert len(_attempts(live_api)) == 1 + rejected  # accepted attempts stay on the terminal

        # The platform turned collection off but this terminal has not polled: the upload is refused
        # (409, nothing stored) and the verification result stands.
        _set_collection(live_api, attempts="all", sample_rate=1.0)
        fleet.poll()
        _set_collection(live_api, enabled=False)
        before = len(_attempts(live_api))
        refused = agent.verify("alice", face(4, 0))
        assert refused.user == "alice" and len(_attempts(live_api)) == before
        assert agent.collection_counters.refusals == {409: 1}
        fleet.poll()
        assert not agent.collection_settings().enabled
        health = agent.health()["collection"]
        assert health["uploaded"] == 1 + rejected
    finally:
        fleet.close()


def test_selection_and_sampling_rules() -> None:
    on = collection.CollectionSettings(
        enabled=True, sample_rate=1.0, attempts="near_threshold", near_threshold_band=0.1
    )
    assert collection.selected(on, match=True, score=0.55, threshold=0.5)
    assert not collection.selected(on, match=True, score=0.7, threshold=0.5)
    rejections = on.model_copy(update={"attempts": "rejections"})
    assert collection.selected(rejections, match=False, score=0.1, threshold=0.5)
    assert not collection.selected(rejections, match=True, score=0.9, threshold=0.5)
    assert not collection.selected(collection.CollectionSettings(), match=False, score=0.0, threshold=0.5)
    half = on.model_copy(update={"attempts": "all", "sample_rate": 0.5})
    rng = random.Random(7)
    taken = sum(
        collection.should_upload(half, match=True, score=0.9, threshold=0.5, rng=rng) for _ in range(2000)
    )
    assert 850 < taken < 1150  # binomial(2000, 0.5): 1000 +- 150 is > 6 standard deviations
    assert to_png(face(1, 0)).startswith(b"\x89PNG")
