"""GET /v1/runs/{id}/overlaps: identities across a run's training datasets that are probably one person."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from facefleet.api.deps import DbSession, Store, Viewer
from facefleet.api.errors import ERROR_RESPONSES
from facefleet.api.params import PathId
from facefleet.platform.runs.overlaps import MAX_PAGE, OverlapPage, get_run_overlaps

router = APIRouter(prefix="/v1/runs", tags=["runs"], responses=ERROR_RESPONSES)


@router.get("/{run_id}/overlaps", response_model=OverlapPage)
def list_run_overlaps(
    run_id: PathId,
    session: DbSession,
    store: Store,
    _principal: Viewer,
    offset: Annotated[int, Query(ge=0, description="pairs to skip (best score first)")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="pairs to return")] = 100,
) -> OverlapPage:
    """Pairs of identities (dataset, identity folder, score) that are probably the same person, found when
    the run succeeded. 404: no such run, or no list stored; 409: the run has not succeeded, or trained on a
    single dataset."""
    return get_run_overlaps(session, store, run_id, offset=offset, limit=limit)
