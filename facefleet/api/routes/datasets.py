"""/v1/datasets and /v1/verification-sets: register (URI or streamed upload), list, show, delete."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile, status
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from facefleet.api.deps import Admin, DbSession, Store, Viewer
from facefleet.api.errors import ERROR_RESPONSES, Problem
from facefleet.api.pagination import Page, Pagination, make_page, slice_page
from facefleet.api.params import PathId
from facefleet.platform.datasets import service
from facefleet.platform.datasets.schemas import (
    ALIGNER_PATTERN,
    DATASET_NAME_PATTERN,
    DatasetKindFilter,
    DatasetOut,
    DatasetVersionDetail,
    DatasetVersionOut,
    RegisteredKind,
    RegisterRequest,
)
from facefleet.platform.datasets.source_policy import SourcePolicy
from facefleet.platform.datasets.sources import ArchiveLimits
from facefleet.platform.db.models import Dataset
from facefleet.platform.errors import InvalidInputError, PayloadTooLargeError
from facefleet.platform.settings import Settings
from facefleet.platform.store import ObjectStore

router = APIRouter(
    tags=["datasets"],
    responses={
        **ERROR_RESPONSES,
        413: {"model": Problem, "description": "an upload or archive past a limit (the setting is named)"},
    },
)
UPLOAD_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".bin")
CHUNK = 1 << 20


def _dataset_out(session: Session, dataset: Dataset) -> DatasetOut:
    latest = service.latest_ready_versions(session, [dataset.id]).get(dataset.id)
    return DatasetOut.model_validate(dataset).model_copy(update={"latest_version": latest})


def _register(
    session: Session,
    store: ObjectStore,
    principal: Admin,
    body: RegisterRequest,
    source: str,
    source_label: str,
    policy: SourcePolicy,
    settings: Settings,
) -> JSONResponse:
    version, created = service.register_dataset_version_audited(
        session,
        store,
        actor=principal.actor,
        source_label=source_label,
        name=body.name,
        source=source,
        kind=body.kind,
        description=body.description,
        tags=body.tags,
        min_images_per_identity=body.min_images_per_identity,
        policy=policy,
        limits=ArchiveLimits.from_settings(settings),
        align=body.align,
        aligner=body.aligner,
    )
    detail = DatasetVersionDetail.model_validate(version)
    # 201 for a new version; 200 when the same content was registered before (the existing version).
    return JSONResponse(detail.model_dump(mode="json"), status_code=201 if created else 200)


@router.post(
    "/v1/datasets",
    response_model=DatasetVersionDetail,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"model": DatasetVersionDetail, "description": "same content already registered"}},
)
def register_dataset(
    request: Request, body: RegisterRequest, session: DbSession, store: Store, principal: Admin
) -> JSONResponse:
    """Register a version from a path on the server, an archive, or an s3:// prefix.

    The server reads only under FACEFLEET_DATASET_ROOTS (403 otherwise, whether or not the path exists).
    """
    settings: Settings = request.app.state.settings
    policy = SourcePolicy.for_server(settings)
    return _register(session, store, principal, body, body.source, body.source, policy, settings)


def _safe_suffix(filename: str) -> str:
    lowered = filename.lower()
    for suffix in sorted(UPLOAD_SUFFIXES, key=len, reverse=True):
        if lowered.endswith(suffix):
            return suffix
    raise InvalidInputError(f"upload {filename!r} must be one of {', '.join(UPLOAD_SUFFIXES)}", field="file")


def _spool_upload(upload: UploadFile, target: Path, limit: int) -> int:
    """Copy the upload to ``target`` in chunks, refusing more than ``limit`` bytes."""
    written = 0
    with open(target, "wb") as out:
        while chunk := upload.file.read(CHUNK):
            written += len(chunk)
            if written > limit:
                raise PayloadTooLargeError(
                    f"the archive is larger than the limit of {limit} bytes; split it or "
                    "register it from a path or s3:// URI",
                    field="file",
                )
            out.write(chunk)
    if written == 0:
        raise InvalidInputError("the uploaded file is empty", field="file")
    return written


@router.post("/v1/datasets/upload", response_model=DatasetVersionDetail, status_code=status.HTTP_201_CREATED)
def upload_dataset(
    request: Request,
    session: DbSession,
    store: Store,
    principal: Admin,
    file: Annotated[UploadFile, File(description="a .zip, .tar(.gz) or .bin archive")],
    name: Annotated[str, Form(min_length=1, max_length=128, pattern=DATASET_NAME_PATTERN)],
    kind: Annotated[RegisteredKind, Form()] = "train",
    description: Annotated[str, Form(max_length=2000)] = "",
    tags: Annotated[str, Form(description="comma-separated")] = "",
    min_images_per_identity: Annotated[int, Form(ge=1, le=100_000)] = 1,
    align: Annotated[bool, Form()] = False,
    aligner: Annotated[str, Form(pattern=ALIGNER_PATTERN)] = "mtcnn",
) -> JSONResponse:
    """Register a version from an uploaded archive (streamed to a temporary file, size-limited)."""
    limit = request.app.state.settings.upload_max_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + (1 << 20):
        raise PayloadTooLargeError(f"the request is larger than the limit of {limit} bytes", field="file")
    suffix = _safe_suffix(file.filename or "")
    body = RegisterRequest(
        name=name,
        source="upload",
        kind=kind,
        description=description,
        tags=[t.strip() for t in tags.split(",") if t.strip()],
        min_images_per_identity=min_images_per_identity,
        align=align,
        aligner=aligner,
    )
    tmp = Path(tempfile.mkdtemp(prefix="facefleet-upload-"))
    try:
        safe_name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(file.filename or "upload").name)[:100]
        target = tmp / (safe_name if safe_name.lower().endswith(suffix) else f"upload{suffix}")
        _spool_upload(file, target, limit)
        settings: Settings = request.app.state.settings
        policy = SourcePolicy.for_upload(settings)
        label = f"upload:{safe_name}"
        return _register(session, store, principal, body, str(target), label, policy, settings)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _list(session: Session, page: Pagination, kind: str | None) -> Page[DatasetOut]:
    rows, total = service.list_datasets(session, kind=kind, limit=page.limit, offset=page.offset)
    latest = service.latest_ready_versions(session, [d.id for d in rows])
    return make_page(
        rows,
        total,
        page,
        lambda d: DatasetOut.model_validate(d).model_copy(update={"latest_version": latest.get(d.id)}),
    )


@router.get("/v1/datasets", response_model=Page[DatasetOut])
def list_datasets(
    session: DbSession, _principal: Viewer, page: Pagination, kind: DatasetKindFilter | None = None
) -> Page[DatasetOut]:
    """Datasets by name; ``kind`` filters on train, verification, landmarks or inspection."""
    return _list(session, page, kind)


@router.get("/v1/verification-sets", response_model=Page[DatasetOut])
def list_verification_sets(session: DbSession, _principal: Viewer, page: Pagination) -> Page[DatasetOut]:
    """Datasets of kind ``verification`` (register them with POST /v1/datasets and kind=verification)."""
    return _list(session, page, "verification")


@router.get("/v1/datasets/{name}", response_model=DatasetOut)
def get_dataset(name: str, session: DbSession, _principal: Viewer) -> DatasetOut:
    return _dataset_out(session, service.get_dataset(session, name))


@router.get("/v1/datasets/{name}/versions", response_model=Page[DatasetVersionOut])
def list_dataset_versions(
    name: str,
    session: DbSession,
    _principal: Viewer,
    page: Pagination,
    version_status: Annotated[str | None, Query(alias="status")] = None,
) -> Page[DatasetVersionOut]:
    versions = service.list_versions(session, name)
    if version_status:
        versions = [v for v in versions if v.status == version_status]
    rows, total = slice_page(versions, page)
    return make_page(rows, total, page, DatasetVersionOut.model_validate)


@router.get("/v1/datasets/{name}/versions/{version}", response_model=DatasetVersionDetail)
def get_dataset_version(
    name: str, version: PathId, session: DbSession, _principal: Viewer
) -> DatasetVersionDetail:
    """One version with its validation report."""
    return DatasetVersionDetail.model_validate(service.get_version(session, name, version))


@router.delete("/v1/datasets/{name}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def delete_dataset(name: str, session: DbSession, store: Store, principal: Admin) -> Response:
    """Delete a dataset no run or model uses (409 otherwise), with its versions and stored objects."""
    service.delete_dataset_audited(session, store, name, actor=principal.actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
