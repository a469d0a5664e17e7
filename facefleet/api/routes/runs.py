"""/v1/runs: create, list with filters, show, metrics (JSON or CSV), plots, logs, cancel."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Request, status
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session

from facefleet.api.action_routes import add_action_route
from facefleet.api.deps import Admin, DbSession, Store, Viewer, read_only
from facefleet.api.errors import ERROR_RESPONSES
from facefleet.api.pagination import KeysetPagination, Page, make_page
from facefleet.api.params import PathId, QueryId
from facefleet.api.responses import model_response
from facefleet.platform.db.models import Run
from facefleet.platform.errors import InvalidInputError, NotFoundError
from facefleet.platform.runs import listing, service
from facefleet.platform.runs.schemas import CancelRequest, MetricPoint, RunCreate, RunView, TrainingConfig
from facefleet.platform.store import validate_key

router = APIRouter(prefix="/v1/runs", tags=["runs"], responses=ERROR_RESPONSES)
RunStatus = Literal["queued", "starting", "running", "succeeded", "failed", "cancelled"]
RunTrigger = Literal["manual", "dataset_added", "schedule", "metric_drop"]
PLOT_MEDIA_TYPES = {".png": "image/png", ".json": "application/json"}


class MetricsBody(BaseModel):
    run_id: int
    series: dict[str, list[MetricPoint]]


class PlotList(BaseModel):
    run_id: int
    plots: list[str]


def _starter(request: Request) -> service.RunStarter | None:
    """Tests replace the launcher with ``app.state.run_starter``; None: the configured launcher."""
    return getattr(request.app.state, "run_starter", None)


@router.post(
    "",
    response_model=RunView,
    status_code=status.HTTP_201_CREATED,
    openapi_extra={"x-config-schema": TrainingConfig.model_json_schema(by_alias=True)},
)
def create_run(body: RunCreate, request: Request, session: DbSession, principal: Admin) -> RunView:
    """Validate datasets and config (422 naming the field), queue the run, then hand it to the launcher."""
    try:
        return service.create_run_audited(session, body, actor=principal.actor, starter=_starter(request))
    except InvalidInputError as exc:
        if exc.field and exc.field not in ("datasets", "verification_sets"):
            exc.field = f"config.{exc.field}"  # config problems are named by their path in the request body
        raise


@router.get("", response_model=Page[RunView])
async def list_runs(
    request: Request,
    _principal: Viewer,
    page: KeysetPagination,
    run_status: Annotated[RunStatus | None, Query(alias="status")] = None,
    trigger: RunTrigger | None = None,
    policy_id: QueryId | None = None,
    created_by: str | None = None,
) -> Response:
    filters = {
        "status": run_status,
        "trigger": trigger,
        "policy_id": policy_id,
        "created_by": created_by or None,
    }
    # Two statements without a transaction around them: a run's dataset rows are written with the run and
    # never change, and runs are never deleted, so the second statement cannot disagree with the first.
    runs, total = await read_only(
        request,
        listing.list_run_views,
        filters=filters,
        limit=page.limit,
        offset=page.offset,
        after=page.after,
    )
    return model_response(make_page(runs, total, page, lambda view: view, key=lambda v: v.id))


@router.get("/{run_id}", response_model=RunView)
def get_run(run_id: PathId, session: DbSession, _principal: Viewer) -> RunView:
    """The run; an active run whose job has ended without a word from the worker is marked failed here,
    with the launcher's account of why (exit status, job message, log tail) in ``error``."""
    run = _run(session, run_id)
    if run.status in service.ACTIVE and run.launcher_job_id is not None:
        run = service.reconcile_active(session, run_id)
    return service.run_view(session, run)


def _run(session: Session, run_id: int) -> Run:
    try:
        return service.get_run(session, run_id)
    except NotFoundError as exc:
        raise NotFoundError(
            f"run {run_id} does not exist; list runs with GET /v1/runs", field="run_id"
        ) from exc


@router.get(
    "/{run_id}/metrics",
    response_model=MetricsBody,
    responses={200: {"content": {"text/csv": {}}, "description": "JSON, or CSV with format=csv"}},
)
def get_run_metrics(
    run_id: PathId,
    session: DbSession,
    _principal: Viewer,
    names: Annotated[str | None, Query(description="comma-separated metric names")] = None,
    output: Annotated[Literal["json", "csv"], Query(alias="format")] = "json",
) -> Any:
    _run(session, run_id)
    wanted = [n.strip() for n in names.split(",") if n.strip()] if names else None
    series = service.run_metrics(session, run_id, wanted)
    if output == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["step", "name", "value"])
        for name, points in series.items():
            writer.writerows((step, name, value) for step, value in points)
        return Response(
            buffer.getvalue(),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="run-{run_id}-metrics.csv"'},
        )
    return MetricsBody(
        run_id=run_id,
        series={
            name: [MetricPoint(step=step, name=name, value=value) for step, value in points]
            for name, points in series.items()
        },
    )


@router.get("/{run_id}/plots", response_model=PlotList)
def list_run_plots(run_id: PathId, session: DbSession, store: Store, _principal: Viewer) -> PlotList:
    _run(session, run_id)
    prefix = f"runs/{run_id}/plots/"
    return PlotList(run_id=run_id, plots=[key.removeprefix(prefix) for key in store.list(prefix)])


@router.get(
    "/{run_id}/plots/{file_name}",
    response_class=StreamingResponse,
    responses={200: {"content": {"image/png": {}, "application/json": {}}}},
)
def get_run_plot(
    run_id: PathId, file_name: str, session: DbSession, store: Store, _principal: Viewer
) -> StreamingResponse:
    _run(session, run_id)
    key = validate_key(f"runs/{run_id}/plots/{file_name}")
    if "/" in file_name or not store.exists(key):
        raise NotFoundError(
            f"run {run_id} has no plot {file_name!r}; list them with GET /v1/runs/{run_id}/plots",
            field="file_name",
        )
    media = PLOT_MEDIA_TYPES.get(Path(file_name).suffix, "application/octet-stream")
    return StreamingResponse(store.iter_chunks(key), media_type=media)


@router.get("/{run_id}/logs", response_class=PlainTextResponse)
def get_run_logs(
    run_id: PathId,
    request: Request,
    session: DbSession,
    _principal: Viewer,
    tail: Annotated[int, Query(ge=1, le=100_000, description="last N lines")] = 1000,
) -> str:
    run = _run(session, run_id)
    path = Path(request.app.state.settings.data_dir).resolve() / "runs" / f"{run.id}.log"
    if not path.is_file():
        raise NotFoundError(
            f"no logs for run {run_id} on this server yet (status {run.status}); runs started "
            "by the ray launchers keep their logs in the Ray dashboard",
            field="run_id",
        )
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - 4 * 1024 * 1024))  # at most the last 4 MiB
        lines = handle.read().decode("utf-8", errors="replace").splitlines()
    return "\n".join(lines[-tail:]) + "\n"


def _cancel(
    run_id: PathId, session: DbSession, principal: Admin, body: Annotated[CancelRequest | None, Body()] = None
) -> RunView:
    force = bool(body and body.force)
    _run(session, run_id)
    return service.cancel_run_audited(session, run_id, force=force, actor=principal.actor)


add_action_route(
    router,
    "/{run_id}",
    "cancel",
    _cancel,
    name="cancel_run",
    response_model=RunView,
    summary="Cancel a run (409 when it already finished)",
)
