"""`facefleet runs ...`: create, list, show, watch and cancel training runs (locally or against the API)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from facefleet.client import FacefleetClient
from facefleet.commands import runs_inspect, runs_overlaps
from facefleet.commands._complete import complete_run_ids
from facefleet.commands._output import JsonOption, api_url, make_console, print_json, stored_location
from facefleet.commands._remote import ServerOption, connect, local_session, reported_errors, validated
from facefleet.platform.db.models import Run
from facefleet.platform.db.session import session_scope
from facefleet.platform.errors import FacefleetError, InvalidInputError
from facefleet.platform.runs import service
from facefleet.platform.runs.schemas import RunCreate, RunView, apply_overrides

app = typer.Typer(help="Training runs: create, follow, inspect, compare, cancel.", no_args_is_help=True)
app.command("logs")(runs_inspect.logs)
app.command("metrics")(runs_inspect.metrics)
app.command("compare")(runs_inspect.compare)
app.command("plot")(runs_inspect.plot)
app.command("overlaps")(runs_overlaps.overlaps)
STATUSES = ("queued", "starting", "running", "succeeded", "failed", "cancelled")
console = make_console()
SHOWN_METRICS = (
    "loss",
    "identity_loss",
    "domain_loss",
    "domain_accuracy",
    "kl_loss",
    "lr",
    "images_per_second",
    "data_wait_fraction",
)


def _split(values: list[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def load_config(path: Path | None, assignments: list[str]) -> dict[str, Any]:
    base: dict[str, Any] = {}
    if path is not None:
        try:
            base = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{path} is not valid YAML: {error}") from None
        if not isinstance(base, dict):
            raise ValueError(f"{path} must hold a mapping of TrainingConfig fields")
    return apply_overrides(base, assignments)


@dataclass(frozen=True)
class RunProgress:
    """What the progress bar shows of a run at one poll."""

    status: str
    stage: str
    step: int
    total_steps: int
    loss: float | None


def _local_progress(run_id: int, _previous: RunProgress | None) -> RunProgress:
    with session_scope() as session:
        run = session.get(Run, run_id)
        if run is None:
            raise FacefleetError(f"no run with id {run_id}")
        loss = service.latest_metrics(session, run_id).get("loss")
        return RunProgress(run.status, run.stage, run.step, run.total_steps, loss)


def _remote_latest_metrics(
    client: FacefleetClient, run_id: int, names: str | None = None
) -> dict[str, float]:
    series = client.get(f"/v1/runs/{run_id}/metrics", names=names)["series"]
    return {name: points[-1]["value"] for name, points in series.items() if points}


def _remote_progress(client: FacefleetClient, run_id: int, previous: RunProgress | None) -> RunProgress:
    view = RunView.model_validate(client.get(f"/v1/runs/{run_id}"))
    if previous is not None and previous.step == view.step:
        loss = previous.loss  # no new step, no new loss: spare the server the metrics query
    else:
        loss = _remote_latest_metrics(client, run_id, "loss").get("loss")
    return RunProgress(view.status, view.stage, view.step, view.total_steps, loss)


def follow_run(
    run_id: int,
    *,
    description: str | None = None,
    poll_seconds: float = 1.0,
    out: Console | None = None,
    client: FacefleetClient | None = None,
) -> str:
    """A live progress bar (step/total, stage, loss, ETA) until the run finishes; its final status.

    With a client it polls ``GET /v1/runs/{id}``; without, the local database."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[detail]}"),
    )
    with Progress(*columns, console=out or console, transient=False) as bar:
        task = bar.add_task(description or f"run {run_id}", total=None, detail="queued")
        polls, progress = 0, None
        while True:
            if client is None:
                progress = _local_progress(run_id, progress)
            else:
                progress = _remote_progress(client, run_id, progress)
            loss = f" loss {progress.loss:.3f}" if progress.loss is not None else ""
            bar.update(
                task,
                completed=progress.step,
                total=progress.total_steps or None,
                detail=f"{progress.status}: {progress.stage}{loss}",
            )
            if progress.status in service.FINISHED:
                return progress.status
            time.sleep(poll_seconds)
            polls += 1
            # A worker that died without a word must not leave us waiting forever (the server does this
            # itself for remote runs).
            if client is None and polls % 10 == 0:
                with session_scope() as session:
                    service.reconcile_run(session, run_id)


def follow_until_done(
    run_id: int, *, client: FacefleetClient | None, server: str | None, poll_seconds: float = 1.0
) -> str:
    """``follow_run``; on Ctrl-C, say that the run goes on and how to cancel it (exit code 130)."""
    try:
        return follow_run(run_id, client=client, poll_seconds=poll_seconds)
    except KeyboardInterrupt:
        remote = f" --server {server}" if server else ""
        console.print(
            f"\nstopped following run {run_id}; it keeps running. Follow it again with "
            f"`facefleet runs watch {run_id}{remote}`; "
            f"cancel it with `facefleet runs cancel {run_id}{remote}`."
        )
        raise typer.Exit(code=130) from None


@app.command("create")
def create(
    datasets: list[str] = typer.Option(
        ...,
        "--datasets",
        help="Training datasets: name, name:version or id; "
        "comma-separated or repeated (order = class offsets).",
    ),
    verification: list[str] = typer.Option([], "--verification", help="Verification sets (comma-separated)."),
    config_file: Path | None = typer.Option(
        None, "--config", exists=True, dir_okay=False, help="YAML file of TrainingConfig fields."
    ),
    assignments: list[str] = typer.Option([], "--set", help="Override one field, e.g. --set head.s=32."),
    name: str = typer.Option("", "--name", help="Run name (default: the dataset names)."),
    wait: bool = typer.Option(False, "--wait", help="Follow the run until it finishes."),
    start: bool = typer.Option(True, "--start/--no-start", help="Hand the run to the launcher at once."),
    server: ServerOption = None,
) -> None:
    """Create a training run (and start it)."""
    with reported_errors(), connect(server) as client:
        body = {
            "datasets": _split(datasets),
            "verification_sets": _split(verification),
            "config": load_config(config_file, assignments),
            "name": name,
            "start": start,
        }
        view = RunView.model_validate(client.post("/v1/runs", body)) if client else _create_locally(body)
        if view.status == "failed":  # the launcher refused it; the run records why
            raise FacefleetError(f"run {view.id} could not start: {view.error}")
        console.print(f"run [bold]{view.id}[/bold] {'started' if start else 'queued'}")
        if wait:
            status = follow_until_done(view.id, client=client, server=server)
    if wait:
        console.print(f"run {view.id} {status}")
        raise typer.Exit(code=0 if status == "succeeded" else 1)


def _create_locally(body: dict[str, Any]) -> RunView:
    """The API's use case on the local database: validated, audited, started, failed if it cannot start."""
    request = validated(RunCreate, **body)  # local mode refuses what the API would
    with local_session() as session:
        return service.create_run_audited(session, request, actor="cli")


@app.command("list")
def list_(
    status: str | None = typer.Option(None, "--status", help=" | ".join(STATUSES)),
    limit: int = typer.Option(20, "--limit", min=1, max=10_000),
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """List recent runs."""
    with reported_errors():
        if status is not None and status not in STATUSES:  # refused the same way in both modes
            raise InvalidInputError(
                f"--status {status!r} is unknown; use one of {', '.join(STATUSES)}", field="status"
            )
    with reported_errors(), connect(server) as client:
        if client is not None:
            items = client.iter_pages("/v1/runs", max_items=limit, status=status)
            views = [RunView.model_validate(item) for item in items]
        else:
            with local_session() as session:
                runs = service.list_runs(session, status=status, limit=limit)
                views = [service.run_view(session, run) for run in runs]
    if as_json:
        print_json(views)
        return
    table = Table("id", "name", "status", "stage", "progress", "trigger", "created")
    for view in views:
        table.add_row(
            str(view.id),
            view.name,
            view.status,
            view.stage,
            f"{view.progress:.0%}",
            view.trigger,
            view.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)


@app.command("show")
def show(
    run_id: int = typer.Argument(..., min=1, autocompletion=complete_run_ids),
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """Status, progress, datasets, latest metrics and results of one run (with where its files are)."""
    with reported_errors(), connect(server) as client:
        if client is not None:
            view = RunView.model_validate(client.get(f"/v1/runs/{run_id}"))
            latest = _remote_latest_metrics(client, run_id)
            base = str(client.http.base_url)
            files = {
                Path(key).name: api_url(base, f"/v1/runs/{run_id}/plots/{Path(key).name}")
                for key in view.summary.get("plots", [])
            }
            files["metrics.csv"] = api_url(base, f"/v1/runs/{run_id}/metrics?format=csv")
            files["console"] = api_url(base, f"/ui/runs/{run_id}")
        else:
            with local_session() as session:
                run = service.get_run(session, run_id)
                if run.status in service.ACTIVE and run.launcher_job_id is not None:
                    run = service.reconcile_active(session, run_id)
                view = service.run_view(session, run)
                latest = service.latest_metrics(session, run_id)
            files = {Path(key).name: stored_location(key) for key in view.summary.get("plots", [])}
    if as_json:
        print_json({**view.model_dump(mode="json"), "latest_metrics": latest, "files": files})
        return
    _print_run(view, latest, files)


def _print_run(view: RunView, latest: dict[str, float], files: dict[str, str]) -> None:
    eta = f", ETA {view.eta_seconds:.0f} s" if view.eta_seconds and view.status == "running" else ""
    console.print(
        f"run {view.id} [bold]{view.status}[/bold] ({view.stage}) step {view.step}/{view.total_steps}"
        f" {view.progress:.0%}{eta}"
    )
    if view.error:
        console.print(f"[red]error:[/red] {view.error}")
    table = Table("role", "dataset", "version", "class offset", "classes")
    for entry in view.datasets:
        table.add_row(
            entry.role, entry.dataset, str(entry.version), str(entry.class_offset), str(entry.num_classes)
        )
    console.print(table)
    metrics = Table("metric", "latest value")
    for name in sorted(latest, key=lambda n: (n.startswith("eval/"), n)):
        if name in SHOWN_METRICS or name.endswith("/accuracy"):
            metrics.add_row(name, f"{latest[name]:.4g}")
    console.print(metrics)
    if view.summary.get("model"):
        model = view.summary["model"]
        console.print(
            f"model {model['name']} v{model['version']} "
            f"(`facefleet models show {model['name']} {model['version']}`)"
        )
    for label, location in files.items():
        console.print(f"{label}: {location}")


@app.command("watch")
def watch(
    run_id: int = typer.Argument(..., min=1, autocompletion=complete_run_ids),
    interval: float = typer.Option(1.0, "--interval", min=0.05, help="Seconds between polls."),
    server: ServerOption = None,
) -> None:
    """Follow a run with a live progress bar until it finishes."""
    with reported_errors(), connect(server) as client:
        status = follow_until_done(run_id, poll_seconds=interval, client=client, server=server)
    console.print(f"run {run_id} {status}")
    raise typer.Exit(code=0 if status == "succeeded" else 1)


@app.command("cancel")
def cancel(
    run_id: int = typer.Argument(..., min=1, autocompletion=complete_run_ids),
    force: bool = typer.Option(False, "--force", help="Stop the job now instead of at its next check."),
    server: ServerOption = None,
) -> None:
    """Cancel a run."""
    with reported_errors(), connect(server) as client:
        if client is not None:
            status = client.post(f"/v1/runs/{run_id}:cancel", {"force": force})["status"]
        else:
            with local_session() as session:
                status = service.cancel_run_audited(session, run_id, force=force, actor="cli").status
    console.print(f"run {run_id}: {'cancelled' if status == 'cancelled' else 'cancel requested'}")
