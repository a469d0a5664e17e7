"""The terminals' one-statement poll (Core) agrees with the ORM use case in every rollout state."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from facefleet.platform.auth.service import hash_token
from facefleet.platform.db.models import CollectionSetting, Device, DeviceDeployment
from facefleet.platform.deployments import polling
from facefleet.platform.deployments import service as deployments
from facefleet.platform.deployments.assignment import AssignedModelCache, assignment_state
from facefleet.platform.devices import service as devices
from facefleet.platform.errors import AuthenticationError, PermissionDeniedError
from facefleet.platform.settings import get_settings
from facefleet.platform.store import ObjectStore
from tests.terminal.model_factory import register_test_model


@pytest.fixture(autouse=True)
def _admin_webhook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEFLEET_NOTIFY_WEBHOOKS", '["http://127.0.0.1:9/admin-hook"]')
    get_settings.cache_clear()


def _enrolled(session: Session, name: str, group: str = "lobby") -> tuple[Device, str]:
    device, token, _ = devices.register_device(session, name=name, group=group)
    return devices.enroll(session, token)


def _installed_via_core(
    engine: Engine, credential: str, deployment_id: int, store: ObjectStore, cache: AssignedModelCache
) -> None:
    """The terminal's `installed` report through the Core fast path (as the agent sends it)."""
    polling.report_status(
        engine,
        credential,
        deployment_id=deployment_id,
        status="installed",
        message="",
        store=store,
        cache=cache,
    )


def _agree(session: Session, fleet: list[tuple[Device, str]]) -> list[str]:
    """Every device's state from STATE equals the ORM use case's; returns the actions."""
    actions = []
    for device, credential in fleet:
        row = session.execute(polling.STATE, {"digest": hash_token(credential)}).first()
        assert row is not None and row.id == device.id
        fast = polling.state_of(row)
        slow = assignment_state(session, device)
        assert fast == slow, device.name
        assert fast is not None and fast.etag == slow.etag
        actions.append(fast.action)
    return actions


def test_core_state_matches_the_orm_through_canary_stop_and_rollback(
    session: Session, local_store: ObjectStore, tmp_path: Path
) -> None:
    old = register_test_model(session, local_store, tmp_path / "m1", seed=1)
    new = register_test_model(session, local_store, tmp_path / "m2", seed=2)
    fleet = [_enrolled(session, f"t{i}") for i in range(5)]
    assert _agree(session, fleet) == ["none"] * 5  # no deployment yet
    session.add(
        CollectionSetting(
            group="lobby", enabled=True, sample_rate=0.5, attempts="all", near_threshold_band=0.1
        )
    )
    session.flush()
    assert _agree(session, fleet) == ["none"] * 5  # the collection part is in the state (and the ETag)

    first = deployments.create_deployment(
        session, model_version_id=old.id, group="lobby", strategy="canary", canary_percent=40
    )
    assert _agree(session, fleet) == ["install", "install", "none", "none", "none"]  # the rest waits
    deployments.report_device_status(session, fleet[0][0], deployment_id=first.id, status="downloading")
    deployments.report_device_status(session, fleet[0][0], deployment_id=first.id, status="installed")
    assert _agree(session, fleet) == ["install", "install", "none", "none", "none"]
    deployments.report_device_status(session, fleet[1][0], deployment_id=first.id, status="installed")
    assert _agree(session, fleet) == ["install"] * 5  # canaries done: released
    for device, _ in fleet[2:]:
        deployments.report_device_status(session, device, deployment_id=first.id, status="installed")
    assert _agree(session, fleet) == ["install"] * 5  # completed: installed devices keep their model

    second = deployments.create_deployment(
        session, model_version_id=new.id, group="lobby", strategy="canary", canary_percent=40
    )
    deployments.report_device_status(session, fleet[0][0], deployment_id=second.id, status="failed")
    assert _agree(session, fleet) == ["rollback", "none", "none", "none", "none"]  # stopped
    deployments.report_device_status(session, fleet[0][0], deployment_id=second.id, status="rolled_back")
    assert _agree(session, fleet) == ["none"] * 5


def test_a_late_joiner_is_left_to_the_orm_which_adds_its_row(
    session: Session, local_store: ObjectStore, tmp_path: Path
) -> None:
    version = register_test_model(session, local_store, tmp_path / "m1")
    fleet = [_enrolled(session, "early")]
    deployments.create_deployment(session, model_version_id=version.id, group="lobby")
    late, credential = _enrolled(session, "late")
    row = session.execute(polling.STATE, {"digest": hash_token(credential)}).first()
    assert row is not None and polling.state_of(row) is None  # no row of its own yet
    assert assignment_state(session, late).action == "install"
    assert session.scalar(select(DeviceDeployment.id).where(DeviceDeployment.device_id == late.id))
    assert _agree(session, [*fleet, (late, credential)]) == ["install", "install"]


def test_poll_and_heartbeat_check_the_credential_every_time(session: Session) -> None:
    """No cache: a disabled device or a re-issued credential is refused on the very next request."""
    device, credential = _enrolled(session, "t1")
    session.commit()
    engine = session.get_bind()
    assert (
        polling.heartbeat(engine, credential, agent_version="1", model_version_id=None, health={})[0]
        == device.id
    )
    devices.disable_device(session, device_id=device.id)
    session.commit()
    with pytest.raises(PermissionDeniedError):
        polling.heartbeat(engine, credential, agent_version="1", model_version_id=None, health={})
    other, other_credential = _enrolled(session, "t2")
    session.commit()
    devices.reissue_enrollment_token(session, device_id=other.id)
    session.commit()
    with pytest.raises(AuthenticationError):
        polling.heartbeat(engine, other_credential, agent_version="1", model_version_id=None, health={})
    for bad in ("ffd_unknown", "ffk_an_api_key"):
        with pytest.raises(AuthenticationError):
            polling.heartbeat(engine, bad, agent_version="1", model_version_id=None, health={})
