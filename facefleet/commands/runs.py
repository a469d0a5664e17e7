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
from facefleet.commands._remote import ServerOption, connect, local_session, reported_errors
from facefleet.platform.db.models import Run
from facefleet.platform.db.session import session_scope
from facefleet.platform.errors import FacefleetError
from facefleet.platform.runs import service
from facefleet.platform.runs.schemas import RunView, apply_overrides

app = typer.Typer(help="Training runs: create, follow, cancel.", no_args_is_help=True)
console = Console()
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
            status = follow_run(view.id, client=client)
    if wait:
        console.print(f"run {view.id} {status}")
        raise typer.Exit(code=0 if status == "succeeded" else 1)


def _create_locally(body: dict[str, Any]) -> RunView:
    with local_session() as session:
        run_id = service.create_run(
            session,
            dataset_names_or_version_ids=body["datasets"],
            verification_sets=body["verification_sets"],
            config=body["config"],
            name=body["name"],
            created_by="cli",
        ).id
    with session_scope() as session:
        run = service.get_run(session, run_id)
        if body["start"]:  # the worker reads the run, so it must be committed first
            service.start_run(session, run)
        return service.run_view(session, run)


@app.command("list")
def list_(
    status: str | None = typer.Option(None, "--status"),
    limit: int = typer.Option(20, "--limit", min=1),
    server: ServerOption = None,
) -> None:
    """List recent runs."""
    with reported_errors(), connect(server) as client:
        if client is not None:
            items = client.iter_pages("/v1/runs", max_items=limit, status=status)
            views = [RunView.model_validate(item) for item in items]
        else:
            with local_session() as session:
                runs = service.list_runs(session, status=status, limit=limit)
                views = [service.run_view(session, run) for run in runs]
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
def show(run_id: int = typer.Argument(...), server: ServerOption = None) -> None:
    """Status, progress, datasets, latest metrics and results of one run."""
    with reported_errors(), connect(server) as client:
        if client is not None:
            view = RunView.model_validate(client.get(f"/v1/runs/{run_id}"))
            latest = _remote_latest_metrics(client, run_id)
        else:
            with local_session() as session:
                run = service.get_run(session, run_id)
                if run.status in service.ACTIVE and run.launcher_job_id is not None:
                    run = service.reconcile_active(session, run_id)
                view = service.run_view(session, run)
                latest = service.latest_metrics(session, run_id)
    _print_run(view, latest)


def _print_run(view: RunView, latest: dict[str, float]) -> None:
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
            f"model {model['name']} v{model['version']}; plots: {', '.join(view.summary.get('plots', []))}"
        )


@app.command("watch")
def watch(
    run_id: int = typer.Argument(...),
    interval: float = typer.Option(1.0, "--interval", min=0.05, help="Seconds between polls."),
    server: ServerOption = None,
) -> None:
    """Follow a run with a live progress bar until it finishes."""
    with reported_errors(), connect(server) as client:
        status = follow_run(run_id, poll_seconds=interval, client=client)
    console.print(f"run {run_id} {status}")
    raise typer.Exit(code=0 if status == "succeeded" else 1)


@app.command("cancel")
def cancel(
    run_id: int = typer.Argument(...),
    force: bool = typer.Option(False, "--force", help="Stop the job now instead of at its next check."),
    server: ServerOption = None,
) -> None:
    """Cancel a run."""
    with reported_errors(), connect(server) as client:
        if client is not None:
            status = client.post(f"/v1/runs/{run_id}:cancel", {"force": force})["status"]
        else:
            with local_session() as session:
                status = service.cancel_run(session, run_id, force=force).status
    console.print(f"run {run_id}: {'cancelled' if status == 'cancelled' else 'cancel requested'}")
