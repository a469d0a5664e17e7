"""Labelled attempts -> an inspection set: a dataset version of kind ``inspection`` packed like a
verification set (shards + manifest + pairs), one pair per attempt: (enrolled reference, attempt crop,
is_same = verdict == "genuine"). ``unusable`` attempts are left out. The distill run reads these sets.
The audited use case (``create_inspection_set_audited``) is in ``service``; this module only packs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from facefleet.platform.datasets import layout, shards
from facefleet.platform.datasets.service import undo_unless_committed
from facefleet.platform.db.base import utcnow
from facefleet.platform.db.models import Attempt, Dataset, DatasetVersion, RunDataset
from facefleet.platform.errors import ConflictError, InvalidInputError
from facefleet.platform.names import check_name
from facefleet.platform.store import ObjectStore

log = logging.getLogger("facefleet.inspections")

FORMAT = "inspection"
KIND = "inspection"
THRESHOLD_TOLERANCE = 1e-6
ERASED = "erased"  # a version whose crops an erasure request removed


def create_inspection_set(
    session: Session,
    store: ObjectStore,
    *,
    name: str,
    attempt_ids: Sequence[int] | None = None,
    device_ids: Sequence[int] | None = None,
    group: str | None = None,
    model_version_ids: Sequence[int] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    now: datetime | None = None,
) -> DatasetVersion:
    """Pack the selected labelled attempts (within retention, verdict genuine or impostor) as the next
    version of inspection dataset ``name``; the same attempts and verdicts again return the same version."""
    check_name(name, what="dataset")
    attempts = _selected(
        session,
        attempt_ids=attempt_ids,
        device_ids=device_ids,
        group=group,
        model_version_ids=model_version_ids,
        since=since,
        until=until,
        now=now or utcnow(),
    )
    threshold = _common_threshold(attempts)
    images = {a.id: (store.get_bytes(a.reference_key), store.get_bytes(a.probe_key)) for a in attempts}
    digest = _content_hash(attempts, images)
    dataset = _inspection_dataset(session, name)
    existing = session.scalar(
        select(DatasetVersion).where(
            DatasetVersion.dataset_id == dataset.id, DatasetVersion.content_hash == digest
        )
    )
    if existing is not None:
        return existing
    version = _claim_version(session, dataset, digest, len(attempts))
    undo_unless_committed(session, store, name, version.version)  # the caller's commit may still fail
    prefix = layout.version_prefix(name, version.version)
    try:
        rows = shards.pack_shards(store, name, version.version, _records(attempts, images))
        version.manifest_key = shards.write_manifest(store, name, version.version, rows)
        pairs = [(2 * i, 2 * i + 1, a.verdict == "genuine") for i, a in enumerate(attempts)]
        shards.write_pairs(store, name, version.version, pairs)
        version.report = _report(attempts, threshold)
        store.put_bytes(
            layout.report_key(name, version.version),
            json.dumps(version.report, indent=2).encode(),
            content_type="application/json",
        )
        version.status = "ready"
        version.identity_count = 0  # pairs only: nothing here is a training class
        version.image_count = 2 * len(attempts)
        version.pair_count = len(attempts)
        session.flush()
    except BaseException:
        try:
            store.delete_prefix(prefix + "/")
        except Exception:  # noqa: BLE001 - keep the original error
            log.exception("could not delete %s/ after a failed inspection set", prefix)
        raise
    return version


def erase_device_from_sets(
    session: Session, store: ObjectStore, device_id: int
) -> tuple[list[str], list[str]]:
    """Erasure reaches the exported copies: every inspection set version holding ``device_id``'s crops
    loses its objects and becomes ``erased`` unless a run used it; returns (erased, kept because a run used
    them) as ``name:version`` labels. An erased version's other attempts stay in the attempts table (within
    retention) and can be exported again, as the next version."""
    rows = session.execute(
        select(DatasetVersion, Dataset.name)
        .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
        .where(DatasetVersion.format == FORMAT)
        .order_by(DatasetVersion.id)
    ).all()
    holding = [
        (v, name)
        for v, name in rows
        if v.status != ERASED and int(device_id) in (v.report or {}).get("devices", [])
    ]
    if not holding:
        return [], []
    used = set(
        session.scalars(
            select(RunDataset.dataset_version_id).where(
                RunDataset.dataset_version_id.in_([v.id for v, _ in holding])
            )
        )
    )
    deleted, kept, prefixes = [], [], []
    for version, name in holding:
        label = f"{name}:{version.version}"
        if version.id in used:
            kept.append(label)
            continue
        prefixes.append(layout.version_prefix(name, version.version) + "/")
        # The row stays as a tombstone (status ``erased``, no pairs, no manifest: its objects are deleted
        # below) so that ``name:version`` is never reused for other content; runs refuse it like any
        # version that is not ready.
        version.status, version.pair_count, version.image_count = ERASED, 0, 0
        version.manifest_key = None
        version.report = {**(version.report or {}), "erased_for_device": int(device_id)}
        deleted.append(label)
    session.flush()
    for prefix in prefixes:  # objects only after the rows' deletion flushed; the caller commits next
        store.delete_prefix(prefix)
    return deleted, kept


def _selected(
    session: Session,
    *,
    attempt_ids: Sequence[int] | None,
    device_ids: Sequence[int] | None,
    group: str | None,
    model_version_ids: Sequence[int] | None,
    since: datetime | None,
    until: datetime | None,
    now: datetime,
) -> list[Attempt]:
    stmt = select(Attempt).where(
        Attempt.status == "labelled",
        Attempt.verdict.in_(("genuine", "impostor")),
        Attempt.expires_at > now,
    )
    if attempt_ids is not None:
        stmt = stmt.where(Attempt.id.in_(list(attempt_ids)))
    if device_ids is not None:
        stmt = stmt.where(Attempt.device_id.in_(list(device_ids)))
    if group is not None:
        stmt = stmt.where(Attempt.group == group)
    if model_version_ids is not None:
        stmt = stmt.where(Attempt.model_version_id.in_(list(model_version_ids)))
    if since is not None:
        stmt = stmt.where(Attempt.captured_at >= since)
    if until is not None:
        stmt = stmt.where(Attempt.captured_at < until)
    attempts = list(session.scalars(stmt.order_by(Attempt.id)).all())
    if attempt_ids is not None:
        missing = sorted(set(attempt_ids) - {a.id for a in attempts})
        if missing:
            raise InvalidInputError(
                f"attempt(s) {', '.join(map(str, missing[:20]))} are unknown, past retention, unlabelled or "
                "labelled unusable; export labelled genuine/impostor attempts only",
                field="attempt_ids",
            )
    if not attempts:
        raise InvalidInputError(
            "no labelled genuine or impostor attempt matches; label some with "
            "`facefleet inspections label` first",
            field="attempt_ids" if attempt_ids is not None else None,
        )
    return attempts


def _common_threshold(attempts: list[Attempt]) -> float:
    thresholds = sorted({round(a.threshold, 6) for a in attempts})
    if thresholds[-1] - thresholds[0] > THRESHOLD_TOLERANCE:
        raise InvalidInputError(
            f"the attempts were scored against different thresholds ({', '.join(map(str, thresholds[:5]))}); "
            "export one model's attempts at a time (model_version_ids)",
            field="model_version_ids",
        )
    return float(attempts[0].threshold)


def _content_hash(attempts: list[Attempt], images: dict[int, tuple[bytes, bytes]]) -> str:
    digest = hashlib.sha256(b"facefleet-inspection-set-v1")
    for attempt in attempts:
        reference, probe = images[attempt.id]
        line = "|".join(
            (
                str(attempt.id),
                str(attempt.verdict),
                repr(attempt.threshold),
                hashlib.sha256(reference).hexdigest(),
                hashlib.sha256(probe).hexdigest(),
            )
        )
        digest.update(line.encode() + b"\n")
    return digest.hexdigest()


def _inspection_dataset(session: Session, name: str) -> Dataset:
    dataset = session.scalar(select(Dataset).where(Dataset.name == name))
    if dataset is None:
        dataset = Dataset(name=name, kind=KIND, description="labelled terminal attempts", tags=[KIND])
        session.add(dataset)
        try:
            with session.begin_nested():
                session.flush()
        except IntegrityError:
            raise ConflictError(f"dataset {name!r} was created concurrently; retry") from None
    elif dataset.kind != KIND:
        raise ConflictError(
            f"dataset {name!r} is a {dataset.kind} dataset; pick another name for the inspection set",
            field="name",
        )
    return dataset


def _claim_version(session: Session, dataset: Dataset, digest: str, count: int) -> DatasetVersion:
    """Insert the next version as ``validating`` first: a concurrent export fails here, before the store."""
    current = session.scalar(
        select(func.max(DatasetVersion.version)).where(DatasetVersion.dataset_id == dataset.id)
    )
    version = DatasetVersion(
        dataset_id=dataset.id,
        version=int(current or 0) + 1,
        source_uri=f"inspection:{count} attempts",
        format=FORMAT,
        status="validating",
        content_hash=digest,
        report={},
    )
    session.add(version)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        raise ConflictError(
            f"another export of {dataset.name!r} finished first; retry to get the next version"
        ) from None
    return version


def _records(attempts: list[Attempt], images: dict[int, tuple[bytes, bytes]]) -> Iterator[shards.ImageRecord]:
    """Two images per attempt, reference then probe, so pair i is manifest rows (2i, 2i+1)."""
    for attempt in attempts:
        reference, probe = images[attempt.id]
        claimed = f"{attempt.device_id}:{attempt.user}"
        probe_identity = claimed if attempt.verdict == "genuine" else f"impostor:{attempt.id}"
        yield shards.ImageRecord.from_bytes(
            identity=claimed, label=0, member=f"{attempt.id}/reference.png", data=reference
        )
        yield shards.ImageRecord.from_bytes(
            identity=probe_identity, label=0, member=f"{attempt.id}/probe.png", data=probe
        )


def _report(attempts: list[Attempt], threshold: float) -> dict[str, Any]:
    genuine = sum(1 for a in attempts if a.verdict == "genuine")
    return {
        "kind": KIND,
        "threshold": threshold,
        "model_versions": sorted({a.model_version_id for a in attempts if a.model_version_id is not None}),
        "attempts": len(attempts),
        "genuine": genuine,
        "impostor": len(attempts) - genuine,
        "devices": sorted({a.device_id for a in attempts}),
        "attempt_ids": [a.id for a in attempts],
    }
