"""Console pages for runs: the list, one run (live progress, curves, logs, cancel), compare 2-4 runs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select

from facefleet.api.deps import DbSession, Store
from facefleet.api.routes import runs as runs_api
from facefleet.platform.db.models import ModelVersion, Run
from facefleet.platform.errors import FacefleetError, InvalidInputError
from facefleet.platform.runs import service
from facefleet.platform.runs.schemas import flatten_config
from facefleet.ui.web import ConsoleUser, ConsoleWriter, back

router = APIRouter(prefix="/ui", include_in_schema=False)
RunId = Annotated[int, Path(ge=1, le=2_000_000_000)]
STATUSES = ("queued", "starting", "running", "succeeded", "failed", "cancelled")
COMPARE_MIN, COMPARE_MAX = 2, 4


def metric_order(name: str) -> tuple[int, str]:
    """Evaluation metrics first, then losses, then the rest (how the tables list them)."""
    if name.startswith("eval/"):
        return (0, name)
    if "loss" in name:
        return (1, name)
    return (2, name)


@router.get("/runs", response_class=HTMLResponse)
def runs_page(
    console: ConsoleUser,
    session: DbSession,
    status: Annotated[str | None, Query(max_length=32)] = None,
) -> HTMLResponse:
    if status and status not in STATUSES:
        raise InvalidInputError(
            f"status {status!r} is unknown; use one of {', '.join(STATUSES)}", field="status"
        )
    query = select(Run).order_by(Run.id.desc()).limit(200)
    if status:
        query = query.where(Run.status == status)
    runs = service.run_views(session, list(session.scalars(query)))
    return console.render("runs.html", title="Runs", nav="runs", runs=runs, status=status, statuses=STATUSES)


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(run_id: RunId, console: ConsoleUser, session: DbSession, store: Store) -> HTMLResponse:
    run = service.get_run(session, run_id)
    view = service.run_view(session, run)
    latest = service.latest_metrics(session, run_id)
    models = session.scalars(select(ModelVersion).where(ModelVersion.run_id == run_id)).all()
    prefix = f"runs/{run_id}/plots/"
    plots = sorted(key.removeprefix(prefix) for key in store.list(prefix))
    return console.render(
        "run.html",
        title=f"Run {run_id}",
        nav="runs",
        run=view,
        finished=run.status in service.FINISHED,
        metrics=sorted(latest.items(), key=lambda item: metric_order(item[0])),
        models=models,
        plots=plots,
    )


@router.post("/runs/{run_id}/cancel")
def cancel_run(run_id: RunId, console: ConsoleWriter, session: DbSession) -> Response:
    try:
        runs_api._cancel(run_id, session, console.principal, None)
    except FacefleetError as exc:
        session.rollback()
        return back(f"/ui/runs/{run_id}", error=exc.message)
    return back(f"/ui/runs/{run_id}", notice=f"cancellation of run {run_id} requested")


def parse_run_ids(values: list[str]) -> list[int]:
    """``?runs=1&runs=2`` or ``?runs=1,2``: 2-4 distinct run ids, in the order given."""
    ids: list[int] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            if not part.isdigit() or not 1 <= int(part) <= 2_000_000_000:
                raise InvalidInputError(f"run id {part!r} is not a positive whole number", field="runs")
            if int(part) not in ids:
                ids.append(int(part))
    if not COMPARE_MIN <= len(ids) <= COMPARE_MAX:
        raise InvalidInputError(
            f"pick {COMPARE_MIN} to {COMPARE_MAX} different runs to compare (got {len(ids)})", field="runs"
        )
    return ids


def comparison_rows(latest: dict[int, dict[str, float]]) -> list[tuple[str, list[float | None]]]:
    names = sorted({name for values in latest.values() for name in values}, key=metric_order)
    return [(name, [latest[run_id].get(name) for run_id in latest]) for name in names]


@router.get("/compare", response_class=HTMLResponse)
def compare_page(
    console: ConsoleUser,
    session: DbSession,
    runs: Annotated[list[str], Query(max_length=200)] = [],  # noqa: B006 - FastAPI copies defaults
) -> HTMLResponse:
    ids = parse_run_ids(runs)
    views = [service.run_view(session, service.get_run(session, run_id)) for run_id in ids]
    latest = {run_id: service.latest_metrics(session, run_id) for run_id in ids}
    rows = comparison_rows(latest)
    configs = _config_differences([view.config for view in views])
    return console.render(
        "compare.html",
        title="Compare runs " + ", ".join(str(i) for i in ids),
        nav="runs",
        runs=views,
        rows=rows,
        config_rows=configs,
        run_ids=",".join(str(i) for i in ids),
    )


def _config_differences(configs: list[dict[str, Any]]) -> list[tuple[str, list[Any]]]:
    """Only the training settings that differ between the compared runs."""
    flat = [flatten_config(config) for config in configs]
    keys = sorted({key for entry in flat for key in entry})
    return [
        (key, [entry.get(key) for entry in flat])
        for key in keys
        if len({repr(entry.get(key)) for entry in flat}) > 1
    ]
