"""`facefleet datasets ...`: register, list, show and generate synthetic face datasets (embedded mode)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from facefleet.platform.datasets import service
from facefleet.platform.datasets.validation import StageProgress
from facefleet.platform.db import migrate
from facefleet.platform.db.models import DatasetVersion
from facefleet.platform.db.session import session_scope
from facefleet.platform.errors import FacefleetError
from facefleet.platform.settings import get_settings
from facefleet.platform.store import get_store

app = typer.Typer(help="Register, inspect and generate face datasets.", no_args_is_help=True)
console = Console()


def _progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


@contextmanager
def _stage_progress() -> Iterator[StageProgress]:
    """A rich bar per stage (hashing, packing) fed by the service's ``progress(stage, done, total)``."""
    with _progress_bar() as bar:
        tasks: dict[str, TaskID] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done)

        yield update


def _fail(error: FacefleetError) -> None:
    console.print(f"[red]error:[/red] {error.message}")
    raise typer.Exit(code=1)


@app.command("register")
def register(
    source: str = typer.Argument(
        ..., help="Folder, .zip/.tar(.gz), RecordIO folder, pairs.txt folder, .bin or s3://"
    ),
    name: str = typer.Option(..., "--name", help="Dataset name."),
    kind: str = typer.Option("train", "--kind", help="train | verification"),
    min_images: int = typer.Option(1, "--min-images", help="Skip identities with fewer usable images."),
    description: str = typer.Option("", "--description"),
    tag: list[str] = typer.Option([], "--tag", help="Tag (repeatable)."),
) -> None:
    """Validate SOURCE and register it as the next version of dataset NAME."""
    migrate.upgrade(get_settings().effective_database_url)  # embedded mode: the schema follows the code
    store = get_store()
    try:
        with _stage_progress() as progress, session_scope() as session:
            version = service.register_dataset_version(
                session,
                store,
                name=name,
                source=source,
                kind=kind,  # type: ignore[arg-type]
                description=description,
                tags=tag,
                min_images_per_identity=min_images,
                progress=progress,
            )
            number, status, images, identities, pairs = (
                version.version,
                version.status,
                version.image_count,
                version.identity_count,
                version.pair_count,
            )
            corrupt, small = (
                version.report.get("corrupt_count", 0),
                version.report.get("small_identity_count", 0),
            )
    except FacefleetError as error:
        _fail(error)
    extra = f", {pairs} pairs" if kind == "verification" else ""
    console.print(
        f"{name}@{number} {status}: {identities} identities, {images} images{extra}"
        f" ({corrupt} corrupt files and {small} small identities skipped)"
    )


@app.command("list")
def list_datasets(kind: str | None = typer.Option(None, "--kind", help="train | verification")) -> None:
    """List datasets with their latest ready version."""
    migrate.upgrade(get_settings().effective_database_url)
    with session_scope() as session:
        items, total = service.list_datasets(session, kind=kind, limit=1000, offset=0)
        latest = service.latest_ready_versions(session, [item.id for item in items])
        table = Table("name", "kind", "latest ready", "versions", "tags", title=f"{total} datasets")
        for item in items:
            versions = service.list_versions(session, item.name)
            table.add_row(
                item.name, item.kind, str(latest.get(item.id, "-")), str(len(versions)), ", ".join(item.tags)
            )
    console.print(table)


def _split_ref(ref: str) -> tuple[str, int | None]:
    name, _, version = ref.partition("@")
    if version and not version.isdigit():
        raise typer.BadParameter(f"{ref!r}: the version after '@' must be a number, e.g. faces@2")
    return name, int(version) if version else None


@app.command("show")
def show(
    ref: str = typer.Argument(..., help="NAME or NAME@VERSION (default: latest ready)."),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
) -> None:
    """Show a dataset version and its validation report."""
    name, number = _split_ref(ref)
    migrate.upgrade(get_settings().effective_database_url)
    try:
        with session_scope() as session:
            version = service.get_version(session, name, number)
    except FacefleetError as error:
        _fail(error)
    if as_json:
        console.print_json(
            json.dumps(
                {
                    "version": version.version,
                    "status": version.status,
                    "error": version.error,
                    "report": version.report,
                }
            )
        )
        return
    _print_version(name, version)


def _print_version(name: str, version: DatasetVersion) -> None:
    report = version.report
    console.print(
        f"[bold]{name}@{version.version}[/bold] {version.status} ({version.format}) from {version.source_uri}"
    )
    if version.error:
        console.print(f"[red]error:[/red] {version.error}")
        return
    summary = Table("", "")
    summary.add_row(
        "identities / images / pairs",
        f"{version.identity_count} / {version.image_count} / {version.pair_count}",
    )
    summary.add_row(
        "images per identity (count: identities)",
        ", ".join(f"{k}: {v}" for k, v in report.get("images_per_identity", {}).items()),
    )
    summary.add_row("image sizes", ", ".join(f"{k}: {v}" for k, v in report.get("image_sizes", {}).items()))
    summary.add_row("corrupt files skipped", str(report.get("corrupt_count", 0)))
    summary.add_row("small identities skipped", str(report.get("small_identity_count", 0)))
    summary.add_row("duplicate groups", str(len(report.get("duplicates", []))))
    summary.add_row("ignored entries", str(report.get("ignored_count", 0)))
    summary.add_row("content hash", version.content_hash)
    console.print(summary)
    for problem in report.get("corrupt", [])[:20]:
        console.print(f"  corrupt: {problem['path']}: {problem['reason']}")
    for small in report.get("small_identities", [])[:20]:
        console.print(f"  small identity: {small['identity']} ({small['images']} images)")


@app.command("synth")
def synth(
    out: Path = typer.Option(..., "--out", help="Output folder."),
    datasets: int = typer.Option(3, "--datasets", help="Number of training datasets."),
    identities: int = typer.Option(40, "--identities", help="Identities per dataset."),
    images: int = typer.Option(10, "--images", help="Images per identity."),
    overlap: float = typer.Option(0.3, "--overlap", help="Fraction of identities shared between datasets."),
    verification_identities: int = typer.Option(20, "--verification-identities"),
    verification_pairs: int = typer.Option(300, "--verification-pairs"),
    size: int = typer.Option(112, "--size", help="Image side in pixels."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Generate synthetic face datasets (ImageFolder trees + a pairs.txt verification set)."""
    from facefleet.workers.synthetic import generate_synthetic_datasets

    total = datasets * identities * images + verification_identities * images
    with _progress_bar() as bar:
        task = bar.add_task("writing images", total=total)
        result = generate_synthetic_datasets(
            out,
            num_datasets=datasets,
            identities_per_dataset=identities,
            images_per_identity=images,
            overlap_fraction=overlap,
            verification_identities=verification_identities,
            verification_pairs=verification_pairs,
            image_size=size,
            seed=seed,
            progress=lambda count: bar.advance(task, count),
        )
    for folder in result.dataset_dirs:
        console.print(f"train: {folder}")
    console.print(f"verification: {result.verification_dir} (pairs: {result.pairs_file})")
    console.print(f"ground truth: {result.ground_truth_file}; {result.image_count} images")
