"""Paced rollouts: each phase's devices get the new model ``release_per_minute`` at a time (issue 21)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from facefleet.platform.db.base import utcnow
from facefleet.platform.db.models import Deployment, Device
from facefleet.platform.deployments import service as deployments
from facefleet.platform.deployments.assignment import AssignedModelCache, artifact_for_device
from facefleet.platform.deployments.pacing import paced_release
from facefleet.platform.deployments.schemas import DeploymentCreate
from facefleet.platform.errors import PermissionDeniedError
from facefleet.platform.store import ObjectStore
from tests.platform.test_deployments_polling import _agree, _enrolled, _installed_via_core
from tests.terminal.model_factory import register_test_model

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)


def test_slot_k_is_released_k_over_rate_minutes_after_its_phase_began() -> None:
    def released(slot: int, seconds: float, rate: int | None = 120) -> bool:
        return paced_release(
            release_per_minute=rate, slot=slot, clock_start=T0, now=T0 + timedelta(seconds=seconds)
        )

    assert released(0, 0) and not released(1, 0)  # the first at once
    assert released(1, 0.5) and not released(2, 0.5)  # 120 a minute: one every 0.5 s
    assert released(240, 120) and not released(241, 120)
    assert released(10**6, 0, rate=None)  # unpaced: everybody
    naive = T0.replace(tzinfo=None)  # SQLite hands back naive UTC values
    assert paced_release(release_per_minute=60, slot=3, clock_start=naive, now=T0 + timedelta(seconds=3))


def _clock_back(session: Session, deployment_id: int, seconds: float, *, column: str = "created_at") -> None:
    """Pretend the phase began ``seconds`` ago."""
    session.execute(
        update(Deployment)
        .where(Deployment.id == deployment_id)
        .values({column: utcnow() - timedelta(seconds=seconds)})
    )
    session.expire_all()


def test_a_paced_rollout_releases_devices_in_order_and_core_agrees_with_the_orm(
    session: Session, local_store: ObjectStore, tmp_path: Path
) -> None:
    version = register_test_model(session, local_store, tmp_path / "m1")
    fleet = [_enrolled(session, f"t{i}") for i in range(5)]
    deployment = deployments.create_deployment(
        session, model_version_id=version.id, group="lobby", release_per_minute=2
    )
    assert _agree(session, fleet) == ["install", "none", "none", "none", "none"]  # one every 30 s
    # A device that has not had its turn may not download the model's files either.
    with pytest.raises(PermissionDeniedError, match="not assigned"):
        artifact_for_device(session, fleet[4][0], file="model.onnx", model_version_id=version.id)
    _clock_back(session, deployment.id, 65)
    assert _agree(session, fleet) == ["install", "install", "install", "none", "none"]
    # A device that began keeps its target whatever the clock says; a finished rollout holds nobody back.
    deployments.report_device_status(session, fleet[2][0], deployment_id=deployment.id, status="downloading")
    _clock_back(session, deployment.id, 0)
    assert _agree(session, fleet) == ["install", "none", "install", "none", "none"]
    _clock_back(session, deployment.id, 600)
    for device, _ in fleet:
        deployments.report_device_status(session, device, deployment_id=deployment.id, status="installed")
    _clock_back(session, deployment.id, 0)
    assert _agree(session, fleet) == ["install"] * 5
    read = deployments.deployment_read(deployments.get_deployment(session, deployment_id=deployment.id))
    assert read.release_per_minute == 2 and read.status == "completed"


def _paced_canary_rollout(
    session: Session, store: ObjectStore, tmp_path: Path, *, devices: int, canary_percent: float
) -> tuple[list[tuple[Device, str]], Deployment]:
    """``devices`` terminals in group lobby and a canary rollout to them paced at one device a minute."""
    version = register_test_model(session, store, tmp_path / "m1")
    fleet = [_enrolled(session, f"t{i}") for i in range(devices)]
    deployment = deployments.create_deployment(
        session,
        model_version_id=version.id,
        group="lobby",
        strategy="canary",
        canary_percent=canary_percent,
        release_per_minute=1,
    )
    return fleet, deployment


def test_the_rest_of_a_canary_rollout_is_paced_from_when_the_canaries_finished(
    session: Session, local_store: ObjectStore, tmp_path: Path
) -> None:
    fleet, deployment = _paced_canary_rollout(session, local_store, tmp_path, devices=5, canary_percent=40)
    assert _agree(session, fleet) == ["install", "none", "none", "none", "none"]
    _clock_back(session, deployment.id, 3600)  # long ago: both canaries, but the rest waits for them
    assert _agree(session, fleet) == ["install", "install", "none", "none", "none"]
    read = deployments.deployment_read(deployments.get_deployment(session, deployment_id=deployment.id))
    assert [d.released for d in read.devices] == [True, True, False, False, False]
    session.commit()
    # The canaries report through the terminals' Core path, which starts the rest's clock.
    engine = session.get_bind()
    cache = AssignedModelCache()
    for _device, credential in fleet[:2]:
        _installed_via_core(engine, credential, deployment.id, local_store, cache)
    session.expire_all()
    started = session.get(Deployment, deployment.id)
    assert started is not None and started.rest_released_at is not None
    # An hour after creation but a moment after the canaries: the rest's first device only.
    assert _agree(session, fleet) == ["install", "install", "install", "none", "none"]
    _clock_back(session, deployment.id, 61, column="rest_released_at")
    assert _agree(session, fleet) == ["install"] * 4 + ["none"]
    read = deployments.deployment_read(deployments.get_deployment(session, deployment_id=deployment.id))
    assert [d.released for d in read.devices] == [True, True, True, True, False]
    assert read.rest_released_at is not None


def test_the_orm_report_path_starts_the_rest_clock_too(
    session: Session, local_store: ObjectStore, tmp_path: Path
) -> None:
    fleet, deployment = _paced_canary_rollout(session, local_store, tmp_path, devices=4, canary_percent=25)
    deployments.report_device_status(session, fleet[0][0], deployment_id=deployment.id, status="installed")
    session.expire_all()
    assert _agree(session, fleet) == ["install", "install", "none", "none"]
    started = session.get(Deployment, deployment.id)
    assert started is not None and started.rest_released_at is not None


@pytest.mark.parametrize("rate", [0, -5, 10**7])
def test_a_pace_out_of_range_is_refused_with_the_field(rate: int) -> None:
    with pytest.raises(ValueError, match="release_per_minute"):
        DeploymentCreate(model_version_id=1, group="lobby", release_per_minute=rate)
