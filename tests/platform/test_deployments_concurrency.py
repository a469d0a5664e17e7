"""Two terminals finishing a rollout at the same moment: the rollout completes, once (issue 21)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from facefleet.platform.db.models import AuditEvent, Deployment
from facefleet.platform.deployments import polling
from facefleet.platform.deployments import service as deployments
from facefleet.platform.deployments.assignment import AssignedModelCache
from facefleet.platform.settings import get_settings
from facefleet.platform.store import ObjectStore
from tests.platform.test_deployments_polling import _enrolled, _installed_via_core
from tests.terminal.model_factory import register_test_model


@pytest.fixture(autouse=True)
def _admin_webhook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEFLEET_NOTIFY_WEBHOOKS", '["http://127.0.0.1:9/admin-hook"]')
    get_settings.cache_clear()


@pytest.mark.parametrize("strategy", ["all", "canary"])
def test_the_last_two_devices_reporting_together_complete_the_rollout_once(
    engine: Engine, local_store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strategy: str
) -> None:
    with Session(engine, expire_on_commit=False) as session:
        model = register_test_model(session, local_store, tmp_path / "m", seed=1)
        fleet = [_enrolled(session, f"t{i}") for i in range(3)]
        deployment = deployments.create_deployment(
            session,
            model_version_id=model.id,
            group="lobby",
            strategy=strategy,
            canary_percent=60,  # two canaries, one device for the rest
            release_per_minute=60 if strategy == "canary" else None,
        )
        session.commit()
    cache = AssignedModelCache()

    def installed(credential: str) -> None:
        _installed_via_core(engine, credential, deployment.id, local_store, cache)

    if strategy == "all":  # the third device finished first: the other two are the last
        installed(fleet[2][1])
    # Both reports wait for each other just before their "is anything left?" check: without the
    # deployment's row lock each would see the other's row unfinished (not yet committed) and neither
    # would finish the phase. With it the second waits for the first to commit (the meeting times out).
    meeting = threading.Barrier(2, timeout=1.0)
    real_nothing_left, real_release = polling._nothing_left, deployments.release_rest_if_canaries_done

    def meet() -> None:
        try:
            meeting.wait()
        except threading.BrokenBarrierError:
            pass

    def nothing_left_after_meeting(conn, deployment_id):  # type: ignore[no-untyped-def]
        meet()
        return real_nothing_left(conn, deployment_id)

    def release_after_meeting(bind, deployment_id):  # type: ignore[no-untyped-def]
        meet()
        real_release(bind, deployment_id)

    monkeypatch.setattr(polling, "_nothing_left", nothing_left_after_meeting)
    monkeypatch.setattr(deployments, "release_rest_if_canaries_done", release_after_meeting)
    errors: list[BaseException] = []

    def report(credential: str) -> None:
        try:
            installed(credential)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=report, args=(credential,)) for _device, credential in fleet[:2]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    with Session(engine) as session:
        finished = session.get(Deployment, deployment.id)
        assert finished is not None
        if strategy == "all":
            assert finished.status == "completed"
            events = session.scalar(select(func.count()).where(AuditEvent.action == "deployment.finished"))
            assert events == 1
        else:  # the two canaries finished together: the rest's paced clock started
            assert finished.status == "in_progress" and finished.rest_released_at is not None
