"""Dataset service: register immutable, content-addressed versions; list, read and delete datasets.

Failure policy (design.md §10, issues 4 and 11):
- A registration that fails changes no dataset: a new name leaves no dataset row and no version, an
  existing name keeps exactly the versions it had. The error says what to fix and carries the
  validation report when there is one; ``register_dataset_version_audited`` records the attempt as an
  audit event (in its own short transaction, since the caller's is rolled back).
- Which sources may be read is decided first (``SourcePolicy``: allow-listed roots on the server, never
  facefleet's own database, store, data dir or signing key), before any file of the source is opened.
- Archives are extracted under limits (``ArchiveLimits``); one past a limit is a 413 naming the setting.
- Non-fatal problems (corrupt files, small identities) are skipped and listed in the report.
- Objects written before a later failure are deleted: nothing half-written remains. That includes a failure
  of the caller's commit (or a rollback): ``discard_unclaimed_version`` runs then (``db.undo``).
Services never commit the caller's transaction; they flush when ids are needed.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, get_args

import pyarrow as pa
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from facefleet.faces.aligner import Aligner
from facefleet.platform import audit
from facefleet.platform.datasets import layout, shards
from facefleet.platform.datasets.aligners import resolve_aligner, shared_mtcnn
from facefleet.platform.datasets.alignment import align_checked
from facefleet.platform.datasets.formats import DatasetKind, UnknownLayoutError, scan_source
from facefleet.platform.datasets.landmark_data import landmark_table, write_landmarks
from facefleet.platform.datasets.recordio import RecordIOError
from facefleet.platform.datasets.schemas import DATASET_KINDS, AlignmentReport, RegisteredKind
from facefleet.platform.datasets.source_policy import SourcePolicy, shorten
from facefleet.platform.datasets.sources import (
    ArchiveLimitError,
    ArchiveLimits,
    SourceNotFoundError,
    UnsafeSourceError,
    materialize,
)
from facefleet.platform.datasets.validation import (
    DatasetInvalidError,
    StageProgress,
    ValidatedContent,
    check_images,
    content_hash,
    validate,
)
from facefleet.platform.datasets.verification import VerificationFormatError
from facefleet.platform.db.models import Dataset, DatasetVersion, ModelVersion, OutboxEvent, RunDataset
from facefleet.platform.db.paging import fetch_page
from facefleet.platform.db.undo import engine_of, on_rollback
from facefleet.platform.errors import (
    ConflictError,
    FacefleetError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
)
from facefleet.platform.names import check_name
from facefleet.platform.settings import get_settings
from facefleet.platform.store.base import ObjectStore

log = logging.getLogger(__name__)
READY_EVENT = "dataset_version.ready"
MAX_MIN_IMAGES = 100_000
# Corrupt archives count as bad data too (the container could not be read).
_FATAL_SOURCE_ERRORS = (
    UnsafeSourceError,
    UnknownLayoutError,
    VerificationFormatError,
    RecordIOError,
    zipfile.BadZipFile,
    tarfile.TarError,
    EOFError,
)


def _check_request(name: str, kind: str, min_images_per_identity: int) -> None:
    check_name(name, what="dataset")
    if kind not in get_args(RegisteredKind):
        kinds = ", ".join(repr(k) for k in get_args(RegisteredKind))
        raise InvalidInputError(f"kind {kind!r} is unknown: use {kinds}", field="kind")
    if not 1 <= min_images_per_identity <= MAX_MIN_IMAGES:
        raise InvalidInputError(
            f"min_images_per_identity must be 1-{MAX_MIN_IMAGES}", field="min_images_per_identity"
        )


def register_dataset_version(
    session: Session,
    store: ObjectStore,
    *,
    name: str,
    source: str | os.PathLike[str],
    kind: DatasetKind = "train",
    description: str = "",
    tags: Sequence[str] = (),
    min_images_per_identity: int = 1,
    progress: StageProgress | None = None,
    policy: SourcePolicy | None = None,
    limits: ArchiveLimits | None = None,
    align: bool = False,
    aligner: str = "mtcnn",
) -> DatasetVersion:
    """Validate ``source``, pack it into shards and record version n+1 (or return the same-content one).

    ``policy`` decides which sources may be read (default: what the local user can read, never
    facefleet's own files); ``limits`` bound archive expansion (default: from the settings). With
    ``align`` every image is detected, located and warped to 112x112 by ``aligner`` ('mtcnn' or a
    landmark model '<name>[@<version>]' of the registry) before validation; see datasets/alignment.py.
    """
    _check_request(name, kind, min_images_per_identity)
    if align and kind == "landmarks":
        raise InvalidInputError(
            "a landmarks dataset keeps its photos as they are (the points refer to them); drop align",
            field="align",
        )
    settings = get_settings()
    policy = policy or SourcePolicy.for_local_user(settings)
    limits = limits or ArchiveLimits.from_settings(settings)
    uri = policy.check(source)  # before anything of the source is opened
    face_aligner = resolve_aligner(session, store, aligner) if align else None
    dataset = session.scalar(select(Dataset).where(Dataset.name == name))
    if dataset is not None and dataset.kind != kind:
        raise InvalidInputError(
            f"dataset {name!r} is a {dataset.kind} dataset; register {kind} data under another name",
            field="kind",
        )
    with tempfile.TemporaryDirectory(prefix="facefleet-register-") as tmp:
        try:
            inspection = _inspect(
                uri,
                Path(tmp),
                kind,
                min_images_per_identity,
                progress,
                limits,
                face_aligner,
                lambda found: _version_by_hash(session, dataset, found) is not None,
            )
            digest, content = inspection.digest, inspection.content
            existing = _version_by_hash(session, dataset, digest)
            if existing is not None:
                return _existing_or_raise(existing)
            if isinstance(content, DatasetInvalidError):
                raise content
        except SourceNotFoundError as error:
            raise InvalidInputError(shorten(str(error), 400), field="source") from None
        except ArchiveLimitError as error:
            raise PayloadTooLargeError(str(error), field="source") from None
        except DatasetInvalidError as error:
            report = error.report.model_dump(mode="json") if error.report is not None else None
            raise InvalidInputError(str(error), field="source", report=report) from None
        if dataset is None:
            dataset = Dataset(name=name, kind=kind, description=description, tags=list(tags))
            session.add(dataset)
        version = _claim_version(session, dataset, uri=uri, source_format=inspection.format, digest=digest)
        undo_unless_committed(session, store, name, version.version)
        with _cleanup_on_error(session, store, version, layout.version_prefix(name, version.version)):
            assert content is not None  # None only when a version with this hash exists (returned above)
            version.manifest_key = _write_objects(store, name, version.version, content, progress)
            if inspection.outcomes is not None:
                store.put_bytes(
                    layout.alignment_key(name, version.version),
                    json.dumps(inspection.outcomes, indent=1).encode(),
                    content_type="application/json",
                )
            if inspection.landmarks is not None:
                write_landmarks(store, name, version.version, inspection.landmarks)
            _mark_ready(version, content)
            session.flush()
            session.add(
                OutboxEvent(
                    kind=READY_EVENT,
                    payload={
                        "dataset": name,
                        "version": version.version,
                        "dataset_version_id": version.id,
                        "kind": kind,
                        "tags": list(dataset.tags),
                    },
                )
            )
            session.flush()
    return version


def register_dataset_version_audited(
    session: Session,
    store: ObjectStore,
    *,
    actor: str,
    source_label: str,
    **registration: Any,
) -> tuple[DatasetVersion, bool]:
    """The one use case every transport calls: register, audit a new version, audit a refused attempt.

    Returns the version and whether it is new. On a rejected registration the caller's transaction is
    rolled back at once (it changed nothing worth keeping and may hold a SQLite write lock), the attempt
    is recorded in a short transaction of its own, and the error is raised again.
    """
    name = str(registration.get("name", ""))
    before = set(session.scalars(select(DatasetVersion.id).join(Dataset).where(Dataset.name == name)))
    try:
        version = register_dataset_version(session, store, **registration)
    except FacefleetError as error:
        session.rollback()
        _record_refused(session, actor=actor, name=name, source_label=source_label, error=error)
        raise
    created = version.id not in before
    if created:
        audit.record(
            session,
            actor,
            "datasets.register",
            "dataset_version",
            version.id,
            {"dataset": name, "version": version.version, "source": shorten(source_label, 400)},
        )
    return version, created


def _record_refused(
    session: Session, *, actor: str, name: str, source_label: str, error: FacefleetError
) -> None:
    """Commit a ``datasets.register_failed`` audit event on its own; best effort."""
    details = {
        "dataset": shorten(name, 200),
        "source": shorten(source_label, 400),
        "status": error.status_code,
        "error": shorten(error.message, 2000),
    }
    try:
        with Session(bind=session.get_bind(), expire_on_commit=False) as side:
            if side.get_bind().dialect.name == "postgresql":
                side.execute(text("SET LOCAL lock_timeout = '3s'"))
            audit.record(side, actor, "datasets.register_failed", "dataset", None, details)
            side.commit()
    except Exception:  # noqa: BLE001 - recording is best effort; the client still gets the 4xx
        log.warning("could not audit the refused registration of %r", shorten(name, 200), exc_info=True)


def _claim_version(
    session: Session, dataset: Dataset, *, uri: str, source_format: str, digest: str
) -> DatasetVersion:
    """Insert version n+1 as ``validating`` before writing objects, so the unique constraints stop a
    concurrent registration from writing to the same prefix (it fails here, before touching the store)."""
    try:
        session.flush()
        version = DatasetVersion(
            dataset_id=dataset.id,
            version=_next_version_number(session, dataset.id),
            source_uri=uri,
            format=source_format,
            status="validating",
            content_hash=digest,
            report={},
        )
        session.add(version)
        session.flush()
    except IntegrityError:
        raise ConflictError(
            f"another registration of dataset {dataset.name!r} finished first; retry to get the next version"
        ) from None
    return version


def undo_unless_committed(session: Session, store: ObjectStore, name: str, number: int) -> None:
    """Delete version ``number``'s objects if the session's transaction ends without a commit."""
    on_rollback(session, partial(discard_unclaimed_version, engine_of(session), store, name, number))


def discard_unclaimed_version(engine: Engine, store: ObjectStore, name: str, number: int) -> bool:
    """Delete the objects under ``name`` v``number``'s prefix, written by a transaction that did not commit,
    unless another registration holds that version now (its rows committed or in flight: the objects are
    its). The slot is held while deleting: a placeholder row in a side transaction that is rolled back, whose
    insert waits for a registration in flight to end (and makes a new one wait). Returns whether it deleted.
    """
    prefix = layout.version_prefix(name, number) + "/"
    with Session(bind=engine) as side:
        try:
            if side.get_bind().dialect.name == "postgresql":
                side.execute(text("SET LOCAL lock_timeout = '10s'"))
            dataset_id = side.scalar(select(Dataset.id).where(Dataset.name == name))
            if dataset_id is None:  # the dataset was new in the transaction that failed
                placeholder = Dataset(name=name, kind="train", description="", tags=[])
                side.add(placeholder)
                side.flush()
                dataset_id = placeholder.id
            side.add(
                DatasetVersion(
                    dataset_id=dataset_id,
                    version=number,
                    source_uri="",
                    format="",
                    status="pending",
                    content_hash=f"discard:{uuid.uuid4().hex}",
                    report={},
                )
            )
            side.flush()
        except (IntegrityError, OperationalError):
            log.info("%s v%s is another registration's now; its objects stay", name, number, exc_info=True)
            return False
        try:
            store.delete_prefix(prefix)
        finally:
            side.rollback()
    return True


def _mark_ready(version: DatasetVersion, content: ValidatedContent) -> None:
    version.status = "ready"
    version.identity_count = content.report.identity_count
    version.image_count = content.report.image_count
    version.pair_count = content.report.pair_count
    version.report = content.report.model_dump(mode="json")


@dataclass
class Inspection:
    digest: str
    content: ValidatedContent | DatasetInvalidError | None  # None: a version with this digest exists
    format: str
    outcomes: list[dict[str, Any]] | None = None  # alignment, per image
    landmarks: pa.Table | None = None  # kind=landmarks: points, split and box per image


def _inspect(
    source: str | os.PathLike[str],
    workdir: Path,
    kind: DatasetKind,
    min_images: int,
    progress: StageProgress | None,
    limits: ArchiveLimits,
    aligner: Aligner | None,
    known: Callable[[str], bool],
) -> Inspection:
    """(content hash, validated content or the fatal error found after hashing, format, alignment outcomes).

    The content is None when ``known(hash)``: that version exists, so nothing is aligned or validated again.
    """
    try:
        location, left_out = materialize(source, workdir, limits)
        scanned = scan_source(location, kind)
    except ArchiveLimitError:
        raise
    except _FATAL_SOURCE_ERRORS as error:
        raise DatasetInvalidError(shorten(str(error), 2000)) from None
    checked = check_images(scanned, progress)
    align_id = f"{aligner.name}@{aligner.version}" if aligner is not None else None
    digest = content_hash(scanned, checked, kind=kind, min_images=min_images, align=align_id)
    if known(digest):
        return Inspection(digest, None, scanned.format)
    outcomes: list[dict[str, Any]] | None = None
    alignment: AlignmentReport | None = None
    if aligner is not None:
        aligned = align_checked(checked, aligner, progress)
        checked, outcomes, alignment = aligned.images, aligned.outcomes, aligned.report
        if alignment.attempted and not alignment.aligned:
            faceless = DatasetInvalidError(
                f"no face found in any of the {alignment.attempted} images "
                f"(e.g. {alignment.no_face_images[0].path}); register without align if they are "
                "already face crops",
                content_hash=digest,
            )
            return Inspection(digest, faceless, scanned.format, outcomes)
    try:
        content: ValidatedContent | DatasetInvalidError = validate(
            scanned, checked, kind=kind, min_images=min_images, digest=digest, ignored=left_out
        )
    except DatasetInvalidError as error:
        content = error
    if alignment is not None and isinstance(content, ValidatedContent):
        content.report.alignment = alignment
    table: pa.Table | None = None
    if kind == "landmarks" and isinstance(content, ValidatedContent):
        try:
            table, content.report.landmarks = landmark_table(
                scanned, content.images, shared_mtcnn().runners, digest, progress
            )
        except DatasetInvalidError as error:
            content = error
    return Inspection(digest, content, scanned.format, outcomes, table)


def _version_by_hash(session: Session, dataset: Dataset | None, digest: str) -> DatasetVersion | None:
    if dataset is None:
        return None
    return session.scalar(
        select(DatasetVersion).where(
            DatasetVersion.dataset_id == dataset.id, DatasetVersion.content_hash == digest
        )
    )


def _existing_or_raise(existing: DatasetVersion) -> DatasetVersion:
    """Same content registered before: the ready version is the answer; an invalid one is the same error."""
    if existing.status == "invalid":
        raise InvalidInputError(
            existing.error or "this content was registered before and is invalid", field="source"
        )
    return existing


def _next_version_number(session: Session, dataset_id: int) -> int:
    current = session.scalar(
        select(func.max(DatasetVersion.version)).where(DatasetVersion.dataset_id == dataset_id)
    )
    return int(current or 0) + 1


@contextmanager
def _cleanup_on_error(
    session: Session, store: ObjectStore, version: DatasetVersion, prefix: str
) -> Iterator[None]:
    """If the block fails: delete every object under the version prefix and the claimed row."""
    try:
        yield
    except BaseException:
        try:
            store.delete_prefix(prefix + "/")
        except Exception:  # noqa: BLE001 - keep the original error; log the cleanup failure
            log.exception("could not delete %s/ after a failed registration", prefix)
        try:  # the caller rolls back on the error; removing the row also covers a caller that commits anyway
            session.delete(version)
            session.flush()
        except Exception:  # noqa: BLE001 - a broken transaction is rolled back by the caller
            log.debug("could not delete the claimed version row", exc_info=True)
        raise


def _packing_records(content: ValidatedContent) -> Iterator[shards.ImageRecord]:
    for item in content.images:
        yield shards.ImageRecord(
            identity=item.source.identity,
            label=content.labels[item.source.identity],
            member=item.source.relpath,
            data=item.source.read(),
            sha256=item.sha256,
            width=item.width,
            height=item.height,
        )


def _write_objects(
    store: ObjectStore, name: str, number: int, content: ValidatedContent, progress: StageProgress | None
) -> str:
    """Shards, manifest, pairs (verification) and the JSON report; returns the manifest key."""
    total = len(content.images)
    packed = 0

    def on_packed(count: int) -> None:
        nonlocal packed
        packed += count
        if progress is not None:
            progress("packing shards", packed, total)

    rows = shards.pack_shards(store, name, number, _packing_records(content), progress=on_packed)
    manifest_key = shards.write_manifest(store, name, number, rows)
    if content.report.kind == "verification":
        shards.write_pairs(store, name, number, content.pairs, content.pair_folds)
    store.put_bytes(
        layout.report_key(name, number),
        content.report.model_dump_json(indent=2).encode(),
        content_type="application/json",
    )
    return manifest_key


# ---------------------------------------------------------------- reading and deleting


def list_datasets(
    session: Session, *, kind: str | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[Dataset], int | None]:
    """A page of datasets by name, and the total count."""
    if kind is not None and kind not in DATASET_KINDS:
        raise InvalidInputError(
            f"kind {kind!r} is unknown: use one of {', '.join(repr(k) for k in DATASET_KINDS)}", field="kind"
        )
    query = select(Dataset)
    if kind is not None:
        query = query.where(Dataset.kind == kind)
    return fetch_page(session, query.order_by(Dataset.name), limit=limit, offset=offset)


def latest_ready_versions(session: Session, dataset_ids: Sequence[int]) -> dict[int, int]:
    """dataset id -> highest ready version number (for list views)."""
    if not dataset_ids:
        return {}
    rows = session.execute(
        select(DatasetVersion.dataset_id, func.max(DatasetVersion.version))
        .where(DatasetVersion.dataset_id.in_(dataset_ids), DatasetVersion.status == "ready")
        .group_by(DatasetVersion.dataset_id)
    )
    return {int(dataset_id): int(version) for dataset_id, version in rows}


def get_dataset(session: Session, name: str) -> Dataset:
    dataset = session.scalar(select(Dataset).where(Dataset.name == name))
    if dataset is None:
        raise NotFoundError(f"no dataset named {name!r}; `facefleet datasets list` shows the registered ones")
    return dataset


def list_versions(session: Session, name: str) -> list[DatasetVersion]:
    dataset = get_dataset(session, name)
    return list(
        session.scalars(
            select(DatasetVersion)
            .where(DatasetVersion.dataset_id == dataset.id)
            .order_by(DatasetVersion.version)
        )
    )


def get_version(session: Session, name: str, version: int | None = None) -> DatasetVersion:
    """One version; ``None`` means the latest ready version."""
    dataset = get_dataset(session, name)
    query = select(DatasetVersion).where(DatasetVersion.dataset_id == dataset.id)
    if version is None:
        found = session.scalar(
            query.where(DatasetVersion.status == "ready").order_by(DatasetVersion.version.desc())
        )
        if found is None:
            raise NotFoundError(f"dataset {name!r} has no ready version; register valid data first")
        return found
    found = session.scalar(query.where(DatasetVersion.version == version))
    if found is None:
        raise NotFoundError(f"dataset {name!r} has no version {version}")
    return found


def delete_dataset(session: Session, store: ObjectStore, name: str) -> None:
    """Delete a dataset, its versions and their objects; refused while a run (or its model) uses it."""
    dataset = get_dataset(session, name)
    run_ids = list(
        session.scalars(
            select(RunDataset.run_id)
            .join(DatasetVersion, RunDataset.dataset_version_id == DatasetVersion.id)
            .where(DatasetVersion.dataset_id == dataset.id)
            .distinct()
            .order_by(RunDataset.run_id)
        )
    )
    if run_ids:
        models = session.scalar(
            select(func.count()).select_from(ModelVersion).where(ModelVersion.run_id.in_(run_ids))
        )
        users = f"run(s) {', '.join(map(str, run_ids[:10]))}" + (
            f" and {models} model version(s)" if models else ""
        )
        raise ConflictError(f"dataset {name!r} is used by {users}; delete those first")
    for version in session.scalars(select(DatasetVersion).where(DatasetVersion.dataset_id == dataset.id)):
        session.delete(version)
    session.delete(dataset)
    session.flush()
    # Objects go only after the rows' deletion flushed (foreign keys checked); the caller commits next.
    store.delete_prefix(f"datasets/{name}/")


def delete_dataset_audited(session: Session, store: ObjectStore, name: str, *, actor: str) -> None:
    """``delete_dataset`` and its audit event (recorded first: it names the dataset's id)."""
    dataset = get_dataset(session, name)
    audit.record(session, actor, "datasets.delete", "dataset", dataset.id, {"name": name})
    delete_dataset(session, store, name)
