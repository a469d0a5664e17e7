"""Inspection use cases on both databases and both stores: collection on/off, every refused upload stores
nothing, verdicts (404 past retention), the scheduler's retention sweep with its audit event, erasure."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from facefleet.platform.db.base import utcnow
from facefleet.platform.db.models import Attempt, AuditEvent, Device, ModelVersion
from facefleet.platform.errors import FacefleetError, NotFoundError
from facefleet.platform.inspections import service as inspections
from facefleet.platform.inspections.schemas import CollectionSettings
from facefleet.platform.scheduler import Scheduler
from facefleet.platform.store import ObjectStore
from tests.platform.inspections.factories import (
    attempt_body,
    b64,
    collect,
    crop_png,
    give,
    make_device,
    make_version,
)

LIMITS = {"max_bytes": 64 * 1024, "rate_per_hour": 5}


def _stored(session: Session, store: ObjectStore) -> tuple[int, list[str]]:
    rows = int(session.scalar(select(func.count()).select_from(Attempt)) or 0)
    return rows, store.list("attempts/")


@pytest.fixture
def fleet(session: Session) -> tuple[Device, int]:
    device = make_device(session)
    version = make_version(session)
    give(session, device, version)
    session.commit()
    return device, version.id


def test_collection_is_off_by_default_and_nothing_is_collected(
    session: Session, store: ObjectStore, fleet: tuple[Device, int]
) -> None:
    device, version_id = fleet
    assert inspections.assigned_collection(session, "lobby").enabled is False
    assert inspections.get_collection(session, group="lobby").enabled is False
    with pytest.raises(FacefleetError) as refused:
        inspections.record_attempt(session, store, device, attempt_body(version_id), **LIMITS)
    assert refused.value.status_code == 409 and "collection is off" in refused.value.message
    collect(session, sample_rate=0.25, attempts="near_threshold", near_threshold_band=0.1)
    assigned = inspections.assigned_collection(session, "lobby")
    assert (assigned.enabled, assigned.sample_rate, assigned.attempts) == (True, 0.25, "near_threshold")
    collect(session, enabled=False)
    assert inspections.assigned_collection(session, "lobby").enabled is False
    session.commit()
    assert _stored(session, store) == (0, [])
    actions = session.scalars(select(AuditEvent.action).where(AuditEvent.target_type == "device_group"))
    assert list(actions) == ["inspections.collection_set"] * 2


def test_an_attempt_is_stored_under_its_device_with_reencoded_crops(
    session: Session, store: ObjectStore, fleet: tuple[Device, int]
) -> None:
    device, version_id = fleet
    collect(session, retention_days=7)
    attempt = inspections.record_attempt(session, store, device, attempt_body(version_id, seed=3), **LIMITS)
    session.commit()
    prefix = attempt.probe_key.removesuffix("probe.png")  # attempts/<device>/<id>/<this write>/
    assert prefix.startswith(f"attempts/{device.id}/{attempt.id}/") and prefix.count("/") == 4
    assert sorted(store.list(f"attempts/{device.id}/")) == [prefix + "probe.png", prefix + "reference.png"]
    assert store.get_bytes(attempt.probe_key).startswith(b"\x89PNG")
    assert (attempt.status, attempt.decision, attempt.group) == ("pending", "reject", "lobby")
    assert timedelta(days=6, hours=23) < attempt.expires_at - utcnow() <= timedelta(days=7)


@pytest.mark.parametrize(
    ("case", "status"),
    [("disabled", 403), ("too_big", 413), ("unknown_version", 422), ("not_an_image", 422), ("rate", 429)],
)
def test_refused_uploads_store_nothing(
    session: Session, local_store: ObjectStore, fleet: tuple[Device, int], case: str, status: int
) -> None:
    """Local store only: the refusals happen before the store is touched (S3 adds nothing but time)."""
    store = local_store
    device, version_id = fleet
    collect(session)
    session.commit()
    body = attempt_body(version_id)
    limits = dict(LIMITS)
    if case == "disabled":
        device.status = "disabled"
    elif case == "too_big":
        body = attempt_body(version_id, probe_png_b64=b64(crop_png(1, size=256)))
        limits["max_bytes"] = 2000
    elif case == "unknown_version":
        other = make_version(session, "other", 1)  # registered, but never deployed to this device
        body = attempt_body(other.id)
    elif case == "not_an_image":
        body = attempt_body(version_id, probe_png_b64=b64(b"GIF89a not a crop"))
    elif case == "rate":
        limits["rate_per_hour"] = 2
        for seed in range(2):
            inspections.record_attempt(session, store, device, attempt_body(version_id, seed), **limits)
        session.commit()
    before = _stored(session, store)
    with pytest.raises(FacefleetError) as refused:
        inspections.record_attempt(session, store, device, body, **limits)
    session.rollback()
    assert refused.value.status_code == status, refused.value.message
    assert _stored(session, store) == before


def test_verdicts_are_audited_and_past_retention_is_404(
    session: Session, store: ObjectStore, fleet: tuple[Device, int]
) -> None:
    device, version_id = fleet
    collect(session, retention_days=1)
    first = inspections.record_attempt(session, store, device, attempt_body(version_id, 1), **LIMITS)
    second = inspections.record_attempt(session, store, device, attempt_body(version_id, 2), **LIMITS)
    session.commit()
    pending, _ = inspections.list_attempts(session, status="pending")
    assert [a.id for a in pending] == [first.id, second.id]
    inspections.label_attempt_audited(session, attempt_id=first.id, verdict="impostor", actor="key:9:ann")
    inspections.label_attempt_audited(session, attempt_id=first.id, verdict="genuine", actor="key:9:ann")
    session.commit()
    assert [a.id for a in inspections.list_attempts(session, status="pending")[0]] == [second.id]
    assert [a.verdict for a in inspections.list_attempts(session, status="labelled")[0]] == ["genuine"]
    events = session.scalars(
        select(AuditEvent).where(AuditEvent.action == "inspections.label").order_by(AuditEvent.id)
    ).all()
    assert [(e.actor, e.details["verdict"], e.details["previous"]) for e in events] == [
        ("key:9:ann", "impostor", None),
        ("key:9:ann", "genuine", "impostor"),
    ]
    later = utcnow() + timedelta(days=1, minutes=1)  # past retention, before any sweep
    with pytest.raises(NotFoundError):
        inspections.label_attempt_audited(
            session, attempt_id=second.id, verdict="genuine", actor="key:9:ann", now=later
        )
    assert inspections.list_attempts(session, status=None, now=later)[0] == []


def test_scheduler_deletes_attempts_past_retention_with_an_audit_event(
    engine: Engine, session: Session, store: ObjectStore, fleet: tuple[Device, int]
) -> None:
    device, version_id = fleet
    collect(session, retention_days=1)
    old = inspections.record_attempt(session, store, device, attempt_body(version_id, 1), **LIMITS)
    collect(session, retention_days=30)
    kept = inspections.record_attempt(session, store, device, attempt_body(version_id, 2), **LIMITS)
    session.commit()
    old_id, kept_id, device_id = old.id, kept.id, device.id
    now = utcnow() + timedelta(days=2)
    scheduler = Scheduler(engine, store=store, clock=lambda: now, start=lambda s, r: None)
    report = scheduler.tick()
    assert report.attempts_expired == 1
    session.expire_all()
    assert [a.id for a in session.scalars(select(Attempt))] == [kept_id]
    assert store.list(f"attempts/{device_id}/{old_id}/") == []
    assert len(store.list(f"attempts/{device_id}/{kept_id}/")) == 2
    event = session.scalars(select(AuditEvent).where(AuditEvent.action == "inspections.expire")).one()
    assert event.actor == "scheduler" and event.details["deleted"] == 1
    assert event.details["per_device"] == {str(device_id): 1}
    assert scheduler.tick().attempts_expired == 0  # nothing left to do: no second event
    assert (
        session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "inspections.expire")
        )
        == 1
    )


def test_erasure_deletes_one_devices_attempts_and_is_audited(
    session: Session, store: ObjectStore, fleet: tuple[Device, int]
) -> None:
    device, version_id = fleet
    other = make_device(session, "door-2")
    collect(session)
    model = session.get(ModelVersion, version_id)
    assert model is not None
    give(session, other, model)
    for seed in range(3):
        inspections.record_attempt(session, store, device, attempt_body(version_id, seed), **LIMITS)
    theirs = inspections.record_attempt(session, store, other, attempt_body(version_id, 9), **LIMITS)
    session.commit()
    result = inspections.erase_device_attempts_audited(
        session, store, device_id=device.id, actor="key:1:root"
    )
    session.commit()
    assert result.deleted == 3
    assert [a.id for a in session.scalars(select(Attempt))] == [theirs.id]
    assert store.list(f"attempts/{device.id}/") == []
    event = session.scalars(select(AuditEvent).where(AuditEvent.action == "inspections.erase")).one()
    assert (event.target_id, event.details) == (
        str(device.id),
        {"deleted": 3, "inspection_sets_deleted": [], "inspection_sets_kept": []},
    )
    with pytest.raises(NotFoundError):
        inspections.erase_device_attempts_audited(session, store, device_id=999_999, actor="x")


def test_collection_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        CollectionSettings(sample_rate=1.5)
    with pytest.raises(ValueError):
        CollectionSettings(attempts="everything")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        CollectionSettings(retention_days=0)
