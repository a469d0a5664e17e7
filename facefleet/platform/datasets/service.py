"""Dataset service: register immutable, content-addressed versions; list, read and delete datasets.

Failure policy (design.md §10, issue 4):
- Problems with the request itself (bad name, wrong kind for an existing dataset, a path or s3 prefix
  that does not exist) raise InvalidInputError and record nothing.
- Problems with the data (unsafe archive or link, unknown layout, no usable images, a bad .bin) are
  recorded as a version with status ``invalid`` and the message in ``error``; it has no objects in the
  store. The record is committed in its own short transaction (the caller's transaction is rolled back
  by the error), then InvalidInputError is raised with the same message. Registering the same invalid
  content again raises the recorded message without a new row.
- Non-fatal problems (corrupt files, small identities) are skipped and listed in the report.
- Objects written before a later failure are deleted: nothing half-written remains.
Services never commit the caller's transaction; they flush when ids are needed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from facefleet.platform.datasets import layout, shards
from facefleet.platform.datasets.formats import DatasetKind, UnknownLayoutError, scan_source
from facefleet.platform.datasets.recordio import RecordIOError
from facefleet.platform.datasets.schemas import DATASET_NAME_PATTERN
from facefleet.platform.datasets.sources import SourceNotFoundError, UnsafeSourceError, materialize
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
from facefleet.platform.errors import ConflictError, InvalidInputError, NotFoundError
from facefleet.platform.store.base import ObjectStore

log = logging.getLogger(__name__)
READY_EVENT = "dataset_version.ready"
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
    if not re.match(DATASET_NAME_PATTERN, name):
        raise InvalidInputError(
            f"dataset name {name!r} is not allowed: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            field="name",
        )
    if kind not in ("train", "verification"):
        raise InvalidInputError(f"kind {kind!r} is unknown: use 'train' or 'verification'", field="kind")
    if min_images_per_identity < 1:
        raise InvalidInputError("min_images_per_identity must be at least 1", field="min_images_per_identity")


def _source_uri(source: str | os.PathLike[str]) -> str:
    text_source = os.fspath(source)
    return text_source if text_source.startswith("s3://") else str(Path(text_source).expanduser().resolve())


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
) -> DatasetVersion:
    """Validate ``source``, pack it into shards and record version n+1 (or return the same-content one)."""
    _check_request(name, kind, min_images_per_identity)
    dataset = session.scalar(select(Dataset).where(Dataset.name == name))
    if dataset is not None and dataset.kind != kind:
        raise InvalidInputError(
            f"dataset {name!r} is a {dataset.kind} dataset; register {kind} data under another name",
            field="kind",
        )
    uri = _source_uri(source)
    with tempfile.TemporaryDirectory(prefix="facefleet-register-") as tmp:
        try:
            digest, content, source_format = _inspect(
                source, Path(tmp), kind, min_images_per_identity, progress
            )
            existing = _version_by_hash(session, dataset, digest)
            if existing is not None:
                return _existing_or_raise(existing)
            if isinstance(content, DatasetInvalidError):
                raise content
        except SourceNotFoundError as error:
            raise InvalidInputError(str(error), field="source") from None
        except DatasetInvalidError as error:
            _record_invalid(
                session,
                name=name,
                kind=kind,
                description=description,
                tags=tags,
                source_uri=uri,
                message=str(error),
                digest=error.content_hash,
            )
            raise InvalidInputError(str(error), field="source") from None
        if dataset is None:
            dataset = Dataset(name=name, kind=kind, description=description, tags=list(tags))
            session.add(dataset)
        version = _claim_version(session, dataset, uri=uri, source_format=source_format, digest=digest)
        with _cleanup_on_error(session, store, version, layout.version_prefix(name, version.version)):
            version.manifest_key = _write_objects(store, name, version.version, content, progress)
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


def _mark_ready(version: DatasetVersion, content: ValidatedContent) -> None:
    version.status = "ready"
    version.identity_count = content.report.identity_count
    version.image_count = content.report.image_count
    version.pair_count = content.report.pair_count
    version.report = content.report.model_dump(mode="json")


def _inspect(
    source: str | os.PathLike[str],
    workdir: Path,
    kind: DatasetKind,
    min_images: int,
    progress: StageProgress | None,
) -> tuple[str, ValidatedContent | DatasetInvalidError, str]:
    """(content hash, validated content or the fatal error found after hashing, format)."""
    try:
        location, left_out = materialize(source, workdir)
        scanned = scan_source(location, kind)
    except _FATAL_SOURCE_ERRORS as error:
        raise DatasetInvalidError(str(error)) from None
    checked = check_images(scanned, progress)
    digest = content_hash(scanned, checked, kind=kind, min_images=min_images)
    try:
        content: ValidatedContent | DatasetInvalidError = validate(
            scanned, checked, kind=kind, min_images=min_images, digest=digest, ignored=left_out
        )
    except DatasetInvalidError as error:
        content = error
    return digest, content, scanned.format


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
        shards.write_pairs(store, name, number, content.pairs)
    store.put_bytes(
        layout.report_key(name, number),
        content.report.model_dump_json(indent=2).encode(),
        content_type="application/json",
    )
    return manifest_key


def _record_invalid(
    session: Session,
    *,
    name: str,
    kind: str,
    description: str,
    tags: Sequence[str],
    source_uri: str,
    message: str,
    digest: str | None,
) -> None:
    """Commit an ``invalid`` version (no objects) in a separate short transaction; best effort.

    Lock waits are bounded so a caller holding uncommitted writes on the same dataset cannot deadlock us;
    if recording fails the error is logged and the caller still gets the InvalidInputError.
    """
    bind = session.get_bind()
    try:
        with Session(bind=bind, expire_on_commit=False) as side:
            if side.get_bind().dialect.name == "postgresql":
                side.execute(text("SET LOCAL lock_timeout = '3s'"))
            dataset = side.scalar(select(Dataset).where(Dataset.name == name))
            if dataset is None:
                dataset = Dataset(name=name, kind=kind, description=description, tags=list(tags))
                side.add(dataset)
                side.flush()
            digest = digest or _failure_hash(source_uri, message)
            if _version_by_hash(side, dataset, digest) is None:
                side.add(
                    DatasetVersion(
                        dataset_id=dataset.id,
                        version=_next_version_number(side, dataset.id),
                        source_uri=source_uri,
                        format="unknown",
                        status="invalid",
                        content_hash=digest,
                        manifest_key=None,
                        report={},
                        error=message,
                    )
                )
            side.commit()
    except Exception:  # noqa: BLE001 - recording is best effort; the InvalidInputError is what matters
        log.warning("could not record the invalid registration of %r", name, exc_info=True)


def _failure_hash(source_uri: str, message: str) -> str:
    return hashlib.sha256(json.dumps(["invalid", source_uri, message]).encode()).hexdigest()


# ---------------------------------------------------------------- reading and deleting


def list_datasets(
    session: Session, *, kind: str | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[Dataset], int | None]:
    """A page of datasets by name, and the total count."""
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
