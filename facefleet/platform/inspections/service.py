"""Use cases of inspection: collection settings, attempts from terminals, verdicts, retention and erasure.

Every write validates, changes and audits in one function that the API routes and the CLI both call; the
caller owns the transaction. An attempt's crops live in the store under ``attempts/<device>/<id>/<write>/``
(a folder of its own per upload: undoing a write that did not commit can never reach another one's crops,
even where a rolled-back id is given again, as SQLite does).
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from PIL import Image, UnidentifiedImageError
from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.orm import Session

from facefleet.platform import audit
from facefleet.platform.db.base import as_utc, utcnow
from facefleet.platform.db.models import (
    Attempt,
    CollectionSetting,
    DatasetVersion,
    Deployment,
    Device,
    DeviceDeployment,
)
from facefleet.platform.db.paging import fetch_page
from facefleet.platform.db.undo import engine_of, on_rollback
from facefleet.platform.errors import (
    ConflictError,
    FacefleetError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
)
from facefleet.platform.inspections import sets
from facefleet.platform.inspections.schemas import (
    AssignedCollection,
    AttemptRead,
    AttemptUpload,
    CollectionRead,
    CollectionSettings,
    ErasureResult,
    InspectionSetCreate,
    Verdict,
)
from facefleet.platform.inspections.sets import erase_device_from_sets
from facefleet.platform.names import check_name
from facefleet.platform.store import ObjectStore

log = logging.getLogger("facefleet.inspections")

PROBE_FILE = "probe.png"
REFERENCE_FILE = "reference.png"
IMAGE_FILES = {"probe": PROBE_FILE, "reference": REFERENCE_FILE}
MAX_CROP_SIDE = 1024  # a face crop; anything bigger is not what a terminal sends
RATE_WINDOW = timedelta(hours=1)
PURGE_BATCH = 500


class TooManyAttemptsError(FacefleetError):
    status_code = 429
    title = "Too many requests"


# ---------------------------------------------------------------- collection settings


def get_collection(session: Session, *, group: str) -> CollectionRead:
    """A group's settings; a group nobody configured reads as off (the defaults with ``enabled`` false)."""
    row = session.get(CollectionSetting, group)
    if row is None:
        return CollectionRead(
            **CollectionSettings(enabled=False).model_dump(), group=group, updated_by="", updated_at=None
        )
    return _collection_read(row)


def list_collections(session: Session) -> list[CollectionRead]:
    rows = session.scalars(select(CollectionSetting).order_by(CollectionSetting.group)).all()
    return [_collection_read(row) for row in rows]


def set_collection_audited(
    session: Session, *, group: str, settings: CollectionSettings, actor: str
) -> CollectionRead:
    """Turn a group's collection on, off or change it; terminals see it in their next assignment poll."""
    check_name(group, what="device group", field="group")
    row = session.get(CollectionSetting, group)
    before = None if row is None else _collection_read(row).model_dump(mode="json")
    if row is None:
        row = CollectionSetting(group=group)
        session.add(row)
    for field, value in settings.model_dump().items():
        setattr(row, field, value)
    row.updated_by, row.updated_at = actor[:128], utcnow()
    session.flush()
    audit.record(
        session,
        actor,
        "inspections.collection_set",
        "device_group",
        group,
        {"before": before, "after": settings.model_dump(mode="json")},
    )
    return _collection_read(row)


def assigned_collection(session: Session, group: str) -> AssignedCollection:
    """What the group's terminals are told to upload (part of the assignment they poll)."""
    row = session.get(CollectionSetting, group)
    if row is None or not row.enabled or row.sample_rate <= 0:
        return AssignedCollection()
    return AssignedCollection(
        enabled=True,
        sample_rate=row.sample_rate,
        attempts=row.attempts,  # type: ignore[arg-type]
        near_threshold_band=row.near_threshold_band,
    )


def _collection_read(row: CollectionSetting) -> CollectionRead:
    return CollectionRead(
        group=row.group,
        enabled=row.enabled,
        sample_rate=row.sample_rate,
        attempts=row.attempts,  # type: ignore[arg-type]
        near_threshold_band=row.near_threshold_band,
        retention_days=row.retention_days,
        updated_by=row.updated_by,
        updated_at=row.updated_at,
    )


# ---------------------------------------------------------------- attempts from terminals


@dataclass(frozen=True)
class Crops:
    probe: bytes
    reference: bytes


def record_attempt(
    session: Session,
    store: ObjectStore,
    device: Device,
    body: AttemptUpload,
    *,
    max_bytes: int,
    rate_per_hour: int,
    now: datetime | None = None,
) -> Attempt:
    """Store one attempt of an (authenticated, enabled) terminal; 4xx and nothing stored when refused.

    Refused: collection off for the device's group (409), a model version the device was never given (422),
    over the hourly rate (429), crops over the size limit (413) or not images (422).
    """
    now = now or utcnow()
    if device.status == "disabled":
        raise PermissionDeniedError(f"device {device.name!r} is disabled")
    setting = session.get(CollectionSetting, device.group)
    if setting is None or not setting.enabled:
        raise ConflictError(
            f"collection is off for group {device.group!r}; upload attempts only when the assignment's "
            "collection says so"
        )
    if not device_was_given(session, device, body.model_version_id):
        raise InvalidInputError(
            f"model version {body.model_version_id} was never assigned to this device; report the version "
            "that scored the attempt",
            field="model_version_id",
        )
    lock_device_uploads(session, device.id)  # until commit: the count below and the insert are one step
    recent = session.scalar(
        select(func.count())
        .select_from(Attempt)
        .where(Attempt.device_id == device.id, Attempt.created_at > now - RATE_WINDOW)
    )
    if int(recent or 0) >= rate_per_hour:
        raise TooManyAttemptsError(
            f"this device uploaded {recent} attempts in the last hour (at most {rate_per_hour}); "
            "upload fewer (lower the sample rate) or wait"
        )
    crops = Crops(
        probe=_checked_crop(body.probe_png_b64, "probe_png_b64", max_bytes),
        reference=_checked_crop(body.reference_png_b64, "reference_png_b64", max_bytes),
    )
    size = len(crops.probe) + len(crops.reference)
    captured = as_utc(body.captured_at)
    attempt = Attempt(
        device_id=device.id,
        group=device.group,
        model_version_id=body.model_version_id,
        user=body.user,
        score=body.score,
        decision=body.decision,
        threshold=body.threshold,
        captured_at=captured,
        probe_key="",
        reference_key="",
        size_bytes=size,
        status="pending",
        expires_at=now + timedelta(days=setting.retention_days),
        created_at=now,
    )
    session.add(attempt)
    session.flush()
    prefix = f"{attempt_prefix(device.id, attempt.id)}{uuid.uuid4().hex[:16]}/"
    attempt.probe_key, attempt.reference_key = f"{prefix}{PROBE_FILE}", f"{prefix}{REFERENCE_FILE}"
    # The crops go before the caller commits; if that commit fails (or the caller rolls back), delete them.
    on_rollback(session, partial(_discard_uncommitted, engine_of(session), store, attempt.id, prefix))
    try:
        store.put_bytes(attempt.probe_key, crops.probe, content_type="image/png")
        store.put_bytes(attempt.reference_key, crops.reference, content_type="image/png")
        session.flush()
    except BaseException:
        _delete_objects_quietly(store, prefix)
        raise
    return attempt


def lock_device_uploads(session: Session, device_id: int) -> None:
    """Serialise a device's attempt uploads until the transaction ends, so that the hourly count and the
    insert are atomic: concurrent uploads of one device wait here for the one ahead to commit (and then
    count its row). PostgreSQL: a row lock on the device (``SELECT ... FOR UPDATE``; other devices and reads
    go on). SQLite: a write to the device row, which takes the database's write lock (SQLite has one writer
    at a time anyway; it must be taken before the count, not at the insert)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(Device.id).where(Device.id == device_id).with_for_update())
    else:
        session.execute(
            update(Device)
            .where(Device.id == device_id)
            .values(status=Device.status)
            .execution_options(synchronize_session=False)
        )


def device_was_given(session: Session, device: Device, model_version_id: int) -> bool:
    """The device runs this version now or was ever part of a deployment of it."""
    if device.model_version_id == model_version_id:
        return True
    found = session.scalar(
        select(DeviceDeployment.id)
        .join(Deployment, Deployment.id == DeviceDeployment.deployment_id)
        .where(DeviceDeployment.device_id == device.id, Deployment.model_version_id == model_version_id)
        .limit(1)
    )
    return found is not None


def _checked_crop(encoded: str, field: str, max_bytes: int) -> bytes:
    """Base64 image -> re-encoded PNG (the store never keeps the bytes a client sent)."""
    if len(encoded) * 3 // 4 > max_bytes:
        raise PayloadTooLargeError(f"{field} is over the limit of {max_bytes} bytes", field=field)
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(f"{field} is not valid base64", field=field) from None
    try:
        with Image.open(io.BytesIO(raw)) as image:
            if image.format not in ("PNG", "JPEG"):
                raise InvalidInputError(f"{field} must be a PNG or JPEG face crop", field=field)
            if max(image.size) > MAX_CROP_SIDE or min(image.size) < 8:
                raise InvalidInputError(
                    f"{field} is {image.size[0]}x{image.size[1]}; send the face crop (8 to "
                    f"{MAX_CROP_SIDE} pixels a side)",
                    field=field,
                )
            decoded = image.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise InvalidInputError(f"{field} is not a readable image", field=field) from None
    out = io.BytesIO()
    decoded.save(out, format="PNG")
    return out.getvalue()


def _discard_uncommitted(engine: Engine, store: ObjectStore, attempt_id: int, prefix: str) -> None:
    """Delete the crops of an upload whose transaction ended without a commit, unless its row is there after
    all (a commit that reached the database although the client saw an error). The folder is this upload's
    own, so no other upload's crops are in it."""
    try:
        with Session(bind=engine) as side:
            committed = side.scalar(
                select(Attempt.id).where(Attempt.id == attempt_id, Attempt.probe_key == prefix + PROBE_FILE)
            )
    except Exception:  # noqa: BLE001 - cannot tell: an orphaned crop is better than a row without one
        log.warning("could not check attempt %s; its crops under %s stay", attempt_id, prefix, exc_info=True)
        return
    if committed is None:
        _delete_objects_quietly(store, prefix)


def attempt_prefix(device_id: int, attempt_id: int) -> str:
    return f"attempts/{int(device_id)}/{int(attempt_id)}/"


def _delete_objects_quietly(store: ObjectStore, prefix: str) -> None:
    try:
        store.delete_prefix(prefix)
    except Exception:  # noqa: BLE001 - keep the original error
        log.exception("could not delete %s after a failed upload", prefix)


# ---------------------------------------------------------------- inspection


def list_attempts(
    session: Session,
    *,
    status: str | None = "pending",
    device_id: int | None = None,
    limit: int = 50,
    offset: int = 0,
    after: int | None = None,
    now: datetime | None = None,
) -> tuple[list[Attempt], int | None]:
    """A page of attempts still within retention, oldest first."""
    now = now or utcnow()
    stmt = select(Attempt).where(Attempt.expires_at > now)
    if status is not None:
        stmt = stmt.where(Attempt.status == status)
    if device_id is not None:
        stmt = stmt.where(Attempt.device_id == device_id)
    return fetch_page(
        session, stmt.order_by(Attempt.id), limit=limit, offset=offset, after=after, key=Attempt.id
    )


def get_live_attempt(session: Session, attempt_id: int, *, now: datetime | None = None) -> Attempt:
    """An attempt within retention; 404 once it is past (even before the scheduler deleted it)."""
    attempt = session.get(Attempt, attempt_id)
    if attempt is None or as_utc(attempt.expires_at) <= (now or utcnow()):
        raise NotFoundError(
            f"attempt {attempt_id} does not exist or is past its retention; list pending ones with "
            "GET /v1/inspections?status=pending",
            field="attempt_id",
        )
    return attempt


def label_attempt_audited(
    session: Session, *, attempt_id: int, verdict: Verdict, actor: str, now: datetime | None = None
) -> Attempt:
    """Record an inspector's verdict (a second verdict replaces the first; both are in the audit log)."""
    now = now or utcnow()
    attempt = get_live_attempt(session, attempt_id, now=now)
    previous = attempt.verdict
    attempt.verdict, attempt.status = verdict, "labelled"
    attempt.labelled_by, attempt.labelled_at = actor[:128], now
    session.flush()
    audit.record(
        session,
        actor,
        "inspections.label",
        "attempt",
        attempt.id,
        {"verdict": verdict, "previous": previous, "device_id": attempt.device_id},
    )
    return attempt


def attempt_image(session: Session, store: ObjectStore, *, attempt_id: int, which: str) -> bytes:
    attempt = get_live_attempt(session, attempt_id)
    if which not in IMAGE_FILES:
        raise NotFoundError(f"an attempt has images {', '.join(IMAGE_FILES)}, not {which!r}", field="which")
    return store.get_bytes(attempt.probe_key if which == "probe" else attempt.reference_key)


def attempt_read(attempt: Attempt) -> AttemptRead:
    base = f"/v1/inspections/{attempt.id}/images"
    return AttemptRead(
        id=attempt.id,
        device_id=attempt.device_id,
        group=attempt.group,
        model_version_id=attempt.model_version_id,
        user=attempt.user,
        score=attempt.score,
        decision=attempt.decision,
        threshold=attempt.threshold,
        captured_at=attempt.captured_at,
        status=attempt.status,
        verdict=attempt.verdict,
        labelled_by=attempt.labelled_by,
        labelled_at=attempt.labelled_at,
        expires_at=attempt.expires_at,
        created_at=attempt.created_at,
        probe_url=f"{base}/probe",
        reference_url=f"{base}/reference",
    )


# ---------------------------------------------------------------- inspection sets


def create_inspection_set_audited(
    session: Session, store: ObjectStore, body: InspectionSetCreate, *, actor: str
) -> DatasetVersion:
    """Labelled attempts -> the next version of an inspection dataset (packed by ``sets``), audited; the
    use case behind ``POST /v1/inspection-sets`` and ``facefleet inspections export``."""
    version = sets.create_inspection_set(
        session,
        store,
        name=body.name,
        attempt_ids=body.attempt_ids,
        device_ids=body.device_ids,
        group=body.group,
        model_version_ids=body.model_version_ids,
        since=body.since,
        until=body.until,
    )
    audit.record(
        session,
        actor,
        "inspections.export",
        "dataset_version",
        version.id,
        {"name": body.name, "version": version.version, "attempts": version.pair_count},
    )
    return version


# ---------------------------------------------------------------- retention and erasure


def erase_device_attempts_audited(
    session: Session, store: ObjectStore, *, device_id: int, actor: str
) -> ErasureResult:
    """Delete every attempt of a device (rows, then objects), on request, and the inspection set versions
    exported with its crops that no run used (a run's sets are kept and named); audited with the counts."""
    if session.get(Device, device_id) is None:
        raise NotFoundError(f"no device with id {device_id}", field="device")
    deleted = session.scalar(select(func.count()).select_from(Attempt).where(Attempt.device_id == device_id))
    session.execute(delete(Attempt).where(Attempt.device_id == device_id))
    session.flush()
    # Rows go first: if deleting objects fails the request rolls back and can be repeated.
    store.delete_prefix(f"attempts/{int(device_id)}/")
    sets_deleted, sets_kept = erase_device_from_sets(session, store, device_id)
    result = ErasureResult(
        device_id=device_id,
        deleted=int(deleted or 0),
        inspection_sets_deleted=sets_deleted,
        inspection_sets_kept=sets_kept,
    )
    audit.record(
        session, actor, "inspections.erase", "device", device_id, result.model_dump(exclude={"device_id"})
    )
    return result


def purge_expired_attempts(
    session: Session,
    store: ObjectStore,
    *,
    now: datetime | None = None,
    actor: str = "scheduler",
    limit: int = PURGE_BATCH,
    lock_rows: bool = False,
) -> int:
    """Delete attempts past their retention (rows and objects); one audit event per sweep that found any."""
    now = now or utcnow()
    stmt = select(Attempt).where(Attempt.expires_at <= now).order_by(Attempt.id).limit(limit)
    if lock_rows:
        stmt = stmt.with_for_update(skip_locked=True)
    expired = list(session.scalars(stmt).all())
    if not expired:
        return 0
    per_device: dict[int, int] = {}
    prefixes = []
    for attempt in expired:
        per_device[attempt.device_id] = per_device.get(attempt.device_id, 0) + 1
        prefixes.append(attempt_prefix(attempt.device_id, attempt.id))
        session.delete(attempt)
    session.flush()
    for prefix in prefixes:
        store.delete_prefix(prefix)
    audit.record(
        session,
        actor,
        "inspections.expire",
        "attempt",
        None,
        {
            "deleted": len(expired),
            "first_id": expired[0].id,
            "last_id": expired[-1].id,
            "per_device": {str(k): v for k, v in sorted(per_device.items())},
        },
    )
    return len(expired)
