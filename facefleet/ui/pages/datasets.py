"""Console pages for datasets: the list, one dataset's versions with the validation report, thumbnails."""

from __future__ import annotations

import io
from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import HTMLResponse, Response
from PIL import Image

from facefleet.api.deps import DbSession, Store
from facefleet.platform.datasets import service
from facefleet.platform.datasets.schemas import DATASET_NAME_PATTERN
from facefleet.platform.datasets.shards import manifest_rows, read_image_bytes, read_manifest
from facefleet.platform.errors import NotFoundError
from facefleet.ui.web import SECURITY_HEADERS, ConsoleUser

router = APIRouter(prefix="/ui/datasets", include_in_schema=False)
SAMPLES = 12
THUMB_PIXELS = 96
DatasetName = Annotated[str, Path(pattern=DATASET_NAME_PATTERN)]


@router.get("", response_class=HTMLResponse)
def datasets_page(console: ConsoleUser, session: DbSession) -> HTMLResponse:
    rows, total = service.list_datasets(session, limit=500)
    latest = service.latest_ready_versions(session, [row.id for row in rows])
    return console.render(
        "datasets.html", title="Datasets", nav="datasets", datasets=rows, latest=latest, total=total
    )


def _sample_rows(store: Store, manifest_key: str | None) -> list[int]:
    """Indexes of up to SAMPLES manifest rows, one per identity first (what the thumbnails show)."""
    if not manifest_key:
        return []
    rows = manifest_rows(read_manifest(store, manifest_key))
    seen: set[str] = set()
    picked: list[int] = []
    for index, row in enumerate(rows):
        if row.identity not in seen:
            seen.add(row.identity)
            picked.append(index)
        if len(picked) >= SAMPLES:
            break
    return picked


@router.get("/{name}", response_class=HTMLResponse)
def dataset_page(
    name: DatasetName,
    console: ConsoleUser,
    session: DbSession,
    store: Store,
    version: Annotated[int | None, Query(ge=1, le=2_000_000_000)] = None,
) -> HTMLResponse:
    dataset = service.get_dataset(session, name)
    versions = service.list_versions(session, name)
    if not versions:
        raise NotFoundError(f"dataset {name!r} has no versions yet")
    if version is None:
        ready = [v for v in versions if v.status == "ready"]
        current = (ready or versions)[-1]
    else:
        current = service.get_version(session, name, version)
    samples = _sample_rows(store, current.manifest_key) if current.status == "ready" else []
    manifest = (
        manifest_rows(read_manifest(store, current.manifest_key)) if samples and current.manifest_key else []
    )
    return console.render(
        "dataset.html",
        title=f"Dataset {name}",
        nav="datasets",
        dataset=dataset,
        versions=versions,
        current=current,
        report=current.report or {},
        samples=[(index, manifest[index].identity) for index in samples],
    )


@router.get("/{name}/versions/{version}/samples/{index}.png")
def sample_thumbnail(
    name: DatasetName,
    version: Annotated[int, Path(ge=1, le=2_000_000_000)],
    index: Annotated[int, Path(ge=0, le=2_000_000_000)],
    _console: ConsoleUser,
    session: DbSession,
    store: Store,
) -> Response:
    """A small PNG of one image of the version (decoded and re-encoded: never the raw upload bytes)."""
    found = service.get_version(session, name, version)
    rows = manifest_rows(read_manifest(store, found.manifest_key)) if found.manifest_key else []
    if index >= len(rows):
        raise NotFoundError(f"dataset {name!r} v{version} has {len(rows)} images; no image {index}")
    row = rows[index]
    data = read_image_bytes(store, row.shard, row.member, offset=row.offset, size=row.size)
    with Image.open(io.BytesIO(data)) as source:
        thumb = source.convert("RGB")
    thumb.thumbnail((THUMB_PIXELS, THUMB_PIXELS))
    out = io.BytesIO()
    thumb.save(out, "PNG")
    headers = {**SECURITY_HEADERS, "Cache-Control": "private, max-age=3600"}
    return Response(out.getvalue(), media_type="image/png", headers=headers)
