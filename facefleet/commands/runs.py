"""`facefleet runs ...`: create, list, show, watch and cancel training runs (calls services)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from facefleet.platform.db import migrate
from facefleet.platform.db.models import Run
from facefleet.platform.db.session import session_scope
from facefleet.platform.errors import FacefleetError
from facefleet.platform.runs import service
from facefleet.platform.runs.schemas import apply_overrides
from facefleet.platform.settings import get_settings

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


def _fail(error: FacefleetError | ValueError) -> None:
    console.print(f"[red]error:[/red] {getattr(error, 'message', str(error))}")
    raise typer.Exit(code=1)


def _split(values: list[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def load_config(path: Path | None, assignments: list[str]) -> dict[str, Any]:
    base: dict[str, Any] = {}
    if path is not None:
        base = yaml.safe_load(path.read_text()) or {}
        if not isinstance(base, dict):
            raise ValueError(f"{path} must hold a mapping of TrainingConfig fields")
    return apply_overrides(base, assignments)


def follow_run(
    run_id: int, *, description: str | None = None, poll_seconds: float = 1.0, out: Console | None = None
) -> str:
    """A live progress bar (step/total, stage, loss, ETA) until the run finishes; its final status."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[detail]}"),
    )
    with Progress(*columns, console=out or console, transient=False) as bar:
        task = bar.add_task(description or f"run {run_id}", total=None, detail="queued")
        polls = 0
        while True:
            with session_scope() as session:
                run = session.get(Run, run_id)
                if run is None:
                    raise FacefleetError(f"no run with id {run_id}")
                latest = service.latest_metrics(session, run_id)
                status, stage, step, total = run.status, run.stage, run.step, run.total_steps
            loss = f" loss {latest['loss']:.3f}" if "loss" in latest else ""
            bar.update(task, completed=step, total=total or None, detail=f"{status}: {stage}{loss}")
            if status in service.FINISHED:
                return status
            time.sleep(poll_seconds)
            polls += 1
            if polls % 10 == 0:  # a worker that died without a word must not leave us waiting forever
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
) -> None:
    """Create a training run (and start it)."""
    migrate.upgrade(get_settings().effective_database_url)
    try:
        config = load_config(config_file, assignments)
        with session_scope() as session:
            run = service.create_run(
                session,
                dataset_names_or_version_ids=_split(datasets),
                verification_sets=_split(verification),
                config=config,
                name=name,
                created_by="cli",
            )
            run_id = run.id
        if start:  # the worker reads the run, so it must be committed first
            with session_scope() as session:
                service.start_run(session, service.get_run(session, run_id))
    except (FacefleetError, ValueError) as error:
        _fail(error)
    console.print(f"run [bold]{run_id}[/bold] {'started' if start else 'queued'}")
    if wait:
        status = follow_run(run_id)
        console.print(f"run {run_id} {status}")
        raise typer.Exit(code=0 if status == "succeeded" else 1)


@app.command("list")
def list_(
    status: str | None = typer.Option(None, "--status"), limit: int = typer.Option(20, "--limit")
) -> None:
    """List recent runs."""
    with session_scope() as session:
        runs = service.list_runs(session, status=status, limit=limit)
        table = Table("id", "name", "status", "stage", "progress", "trigger", "created")
        for run in runs:
            table.add_row(
                str(run.id),
                run.name,
                run.status,
                run.stage,
                f"{run.progress:.0%}",
                run.trigger,
                run.created_at.strftime("%Y-%m-%d %H:%M"),
            )
    console.print(table)


@app.command("show")
def show(run_id: int = typer.Argument(...)) -> None:
    """Status, progress, datasets, latest metrics and results of one run."""
    try:
        with session_scope() as session:
            view = service.run_view(session, service.get_run(session, run_id))
            latest = service.latest_metrics(session, run_id)
    except FacefleetError as error:
        _fail(error)
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
def watch(run_id: int = typer.Argument(...)) -> None:
    """Follow a run with a live progress bar until it finishes."""
    try:
        status = follow_run(run_id)
    except FacefleetError as error:
        _fail(error)
    console.print(f"run {run_id} {status}")
    raise typer.Exit(code=0 if status == "succeeded" else 1)


@app.command("cancel")
def cancel(
    run_id: int = typer.Argument(...),
    force: bool = typer.Option(False, "--force", help="Stop the job now instead of at its next check."),
) -> None:
    """Cancel a run."""
    try:
        with session_scope() as session:
            run = service.cancel_run(session, run_id, force=force)
            status = run.status
    except FacefleetError as error:
        _fail(error)
    console.print(f"run {run_id}: {'cancelled' if status == 'cancelled' else 'cancel requested'}")
