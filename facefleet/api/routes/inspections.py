"""/v1/inspections (inspector or admin): list attempts, see their crops, label them; erase (admin).
/v1/inspection-sets (admin): labelled attempts -> an inspection dataset version.
/v1/collection (admin): which attempts a device group's terminals upload.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Response, status

from facefleet.api.deps import Admin, DbSession, Inspector, Store
from facefleet.api.errors import ERROR_RESPONSES
from facefleet.api.pagination import KeysetPagination, Page, make_page
from facefleet.api.params import PathId, QueryId
from facefleet.api.responses import model_response
from facefleet.platform.datasets.schemas import DatasetVersionDetail
from facefleet.platform.db.base import DB_INT_MAX
from facefleet.platform.inspections import service as inspections
from facefleet.platform.inspections.schemas import (
    AttemptRead,
    AttemptStatus,
    CollectionRead,
    CollectionSettings,
    ErasureResult,
    InspectionSetCreate,
    VerdictRequest,
)
from facefleet.platform.names import Name

router = APIRouter(prefix="/v1/inspections", tags=["inspections"], responses=ERROR_RESPONSES)
sets_router = APIRouter(prefix="/v1/inspection-sets", tags=["inspections"], responses=ERROR_RESPONSES)
collection_router = APIRouter(prefix="/v1/collection", tags=["inspections"], responses=ERROR_RESPONSES)


@router.get("", response_model=Page[AttemptRead])
def list_attempts(
    session: DbSession,
    _inspector: Inspector,
    page: KeysetPagination,
    status: AttemptStatus | None = Query(default="pending", description="pending | labelled"),
    device: int | None = Query(default=None, ge=1, le=DB_INT_MAX, description="only this device's attempts"),
) -> Response:
    """Attempts within retention, oldest first (default: the ones still waiting for a verdict)."""
    rows, total = inspections.list_attempts(
        session, status=status, device_id=device, limit=page.limit, offset=page.offset, after=page.after
    )
    return model_response(make_page(rows, total, page, inspections.attempt_read, key=lambda a: a.id))


@router.get("/{attempt_id}/images/{which}", response_class=Response)
def attempt_image(
    attempt_id: PathId,
    which: Literal["probe", "reference"],
    session: DbSession,
    store: Store,
    _inspector: Inspector,
) -> Response:
    """The attempt's face crop (``probe``) or the claimed user's enrolled crop (``reference``), PNG."""
    data = inspections.attempt_image(session, store, attempt_id=attempt_id, which=which)
    return Response(content=data, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.post("/{attempt_id}", response_model=AttemptRead)
def label_attempt(
    attempt_id: PathId, body: VerdictRequest, session: DbSession, principal: Inspector
) -> Response:
    """Record a verdict; 404 for an attempt past its retention."""
    attempt = inspections.label_attempt_audited(
        session, attempt_id=attempt_id, verdict=body.verdict, actor=principal.actor
    )
    return model_response(inspections.attempt_read(attempt))


@router.delete("", response_model=ErasureResult)
def erase_device_attempts(device: QueryId, session: DbSession, store: Store, principal: Admin) -> Response:
    """Erase every attempt (rows and crops) of one device, on request."""
    result = inspections.erase_device_attempts_audited(
        session, store, device_id=device, actor=principal.actor
    )
    return model_response(result)


@sets_router.post("", response_model=DatasetVersionDetail, status_code=status.HTTP_201_CREATED)
def create_inspection_set(
    body: InspectionSetCreate, session: DbSession, store: Store, principal: Admin
) -> Response:
    """Pack labelled attempts (genuine/impostor) as the next version of an inspection dataset."""
    version = inspections.create_inspection_set_audited(session, store, body, actor=principal.actor)
    return model_response(DatasetVersionDetail.model_validate(version), status_code=201)


@collection_router.get("", response_model=list[CollectionRead])
def list_collections(session: DbSession, _admin: Admin) -> list[CollectionRead]:
    return inspections.list_collections(session)


@collection_router.get("/{group}", response_model=CollectionRead)
def get_collection(group: Name, session: DbSession, _admin: Admin) -> Response:
    return model_response(inspections.get_collection(session, group=group))


@collection_router.put("/{group}", response_model=CollectionRead)
def set_collection(group: Name, body: CollectionSettings, session: DbSession, principal: Admin) -> Response:
    """Turn collection on or off for a device group; its terminals follow at their next poll."""
    return model_response(
        inspections.set_collection_audited(session, group=group, settings=body, actor=principal.actor)
    )
