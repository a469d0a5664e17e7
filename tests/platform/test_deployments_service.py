"""Deployments at the service level: canary gating, failure limit, supersede, per-device isolation."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from facefleet.platform.db.models import Device, Notification
from facefleet.platform.deployments import service as deployments
from facefleet.platform.deployments.assignment import artifact_for_device, device_assignment
from facefleet.platform.devices import service as devices
from facefleet.platform.errors import ConflictError, InvalidInputError, PermissionDeniedError
from facefleet.platform.settings import get_settings
from facefleet.platform.store import ObjectStore
from tests.terminal.model_factory import register_test_model


@pytest.fixture(autouse=True)
def _admin_webhook(monkeypatch: pytest.MonkeyPatch) -> None:
    """Admins are notified through the configured channels; give them one."""
    monkeypatch.setenv("FACEFLEET_NOTIFY_WEBHOOKS", '["http://127.0.0.1:9/admin-hook"]')
    get_settings.cache_clear()


def _fleet(session: Session, count: int, group: str = "lobby") -> list[Device]:
    out = []
    for index in range(count):
        device, token, _ = devices.register_device(session, name=f"{group}-{index}", group=group)
        devices.enroll(session, token)
        out.append(device)
    return out


def test_canary_releases_the_rest_only_after_every_canary_installed(
    session: Session, local_store: ObjectStore, tmp_path: Path
) -> None:
    version = register_test_model(session, local_store, tmp_path / "m1")
    fleet = _fleet(session, 5)
    deployment = deployments.create_deployment(
        session,
        model_version_id=version.id,
        group="lobby",
        strategy="canary",
        canary_percent=40,
        max_failure_rate=0.2,
    )
    actions = [device_assignment(session, d, store=local_store).action for d in fleet]
    assert actions == ["install", "install", "none", "none", "none"]
    card = device_assignment(session, fleet[0], store=local_store).model
    assert card is not None and card.signature == version.signature
    deployments.report_device_status(session, fleet[0], deployment_id=deployment.id, status="installed")
    assert device_assignment(session, fleet[2], store=local_store).action == "none"
    deployments.report_device_status(session, fleet[1], deployment_id=deployment.id, status="installed")
    assert all(device_assignment(session, d, store=local_store).action == "install" for d in fleet[2:])
    for device in fleet[2:]:
        deployments.report_device_status(session, device, deployment_id=deployment.id, status="installed")
    view = deployments.get_deployment(session, deployment_id=deployment.id)
    assert view.deployment.status == "completed" and view.stage == "done"
    assert {d.model_version_id for d in fleet} == {version.id}
    events = session.scalars(select(Notification.event)).all()
    assert "deployment.finished" in events


def test_failure_over_the_limit_stops_and_rolls_back_failed_devices(
    session: Session, local_store: ObjectStore, tmp_path: Path
) -> None:
    old = register_test_model(session, local_store, tmp_path / "m1", seed=1)
    new = register_test_model(session, local_store, tmp_path / "m2", seed=2)
    fleet = _fleet(session, 5)
    first = deployments.create_deployment(session, model_version_id=old.id, group="lobby")
    for device in fleet:
        deployments.report_device_status(session, device, deployment_id=first.id, status="installed")
    second = deployments.create_deployment(
        session,
        model_version_id=new.id,
        group="lobby",
        strategy="canary",
        canary_percent=40,
        max_failure_rate=0.0,
    )
    deployments.report_device_status(
        session, fleet[0], deployment_id=second.id, status="failed", message="boom"
    )
    assert deployments.get_deployment(session, deployment_id=second.id).deployment.status == "stopped"
    rollback = device_assignment(session, fleet[0], store=local_store)
    assert rollback.action == "rollback" and rollback.model and rollback.model.model_version_id == old.id
    assert device_assignment(session, fleet[1], store=local_store).action == "none"  # never started
    assert device_assignment(session, fleet[4], store=local_store).action == "none"  # never released
    deployments.report_device_status(session, fleet[0], deployment_id=second.id, status="rolled_back")
    assert session.get(Device, fleet[0].id).model_version_id == old.id  # type: ignore[union-attr]
    stopped = session.scalars(select(Notification).where(Notification.event == "deployment.stopped")).one()
    assert stopped.channel == "webhook" and stopped.target.endswith("/admin-hook")
    assert stopped.payload["failed_devices"] == [fleet[0].id]
    with pytest.raises(ConflictError):
        deployments.report_device_status(session, fleet[0], deployment_id=second.id, status="installed")


def test_new_deployment_supersedes_and_devices_see_only_their_own(
    session: Session, local_store: ObjectStore, tmp_path: Path
) -> None:
    v1 = register_test_model(session, local_store, tmp_path / "m1", seed=1)
    v2 = register_test_model(session, local_store, tmp_path / "m2", seed=2)
    (lobby,) = _fleet(session, 1, "lobby")
    (garage,) = _fleet(session, 1, "garage")
    first = deployments.create_deployment(session, model_version_id=v1.id, group="lobby")
    deployments.report_device_status(session, lobby, deployment_id=first.id, status="downloading")
    second = deployments.create_deployment(session, model_version_id=v2.id, group="lobby")
    assert deployments.get_deployment(session, deployment_id=first.id).deployment.status == "superseded"
    assignment = device_assignment(session, lobby, store=local_store)
    assert (
        assignment.deployment_id == second.id
        and assignment.model
        and assignment.model.model_version_id == v2.id
    )
    assert device_assignment(session, garage, store=local_store).action == "none"
    with pytest.raises(PermissionDeniedError):
        artifact_for_device(session, garage, file="model.onnx", model_version_id=v2.id)
    with pytest.raises(PermissionDeniedError):
        artifact_for_device(session, lobby, file="model.onnx", model_version_id=v1.id)
    assert artifact_for_device(session, lobby, file="model.onnx", model_version_id=v2.id).size > 0
    with pytest.raises(InvalidInputError):
        deployments.create_deployment(session, model_version_id=v2.id, group="empty-group")
