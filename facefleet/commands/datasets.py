"""`facefleet datasets ...`: register, list, show (locally or against the API) and synthesise datasets."""

from __future__ import annotations

import math
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from facefleet.client import SLOW_REQUEST_TIMEOUT, FacefleetClient
from facefleet.commands._output import JsonOption, make_console, print_json
from facefleet.commands._remote import ServerOption, connect, local_session, reported_errors, segment
from facefleet.platform.datasets import service
from facefleet.platform.datasets.schemas import (
    DATASET_KINDS,
    DatasetOut,
    DatasetVersionDetail,
    RegisterRequest,
)
from facefleet.platform.datasets.validation import StageProgress
from facefleet.platform.errors import InvalidInputError, NotFoundError
from facefleet.platform.store import get_store

app = typer.Typer(help="Register, inspect and generate face datasets.", no_args_is_help=True)
console = make_console()
# Archives the upload route takes as they are; anything else local (a folder) is zipped first.
UPLOADABLE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".bin")
MIB = 1 << 20


class DatasetRow(NamedTuple):
    dataset: DatasetOut
    version_count: int


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


@app.command("register")
def register(
    source: str = typer.Argument(
        ..., help="Folder, .zip/.tar(.gz), RecordIO folder, pairs.txt folder, .bin or s3://"
    ),
    name: str = typer.Option(..., "--name", help="Dataset name."),
    kind: str = typer.Option(
        "train", "--kind", help="train | verification | landmarks (<image> + <image>.pts, 68 or 5 points)"
    ),
    min_images: int = typer.Option(1, "--min-images", help="Skip identities with fewer usable images."),
    description: str = typer.Option("", "--description"),
    tag: list[str] = typer.Option([], "--tag", help="Tag (repeatable)."),
    align: bool = typer.Option(
        False, "--align", help="Detect the face, locate five points, warp to the 112x112 ArcFace template."
    ),
    aligner: str = typer.Option(
        "mtcnn", "--aligner", help="With --align: mtcnn, or a landmark model NAME or NAME@VERSION."
    ),
    server: ServerOption = None,
) -> None:
    """Validate SOURCE and register it as the next version of dataset NAME (remote: upload it)."""
    with reported_errors(), connect(server) as client:
        # Not validated here: the service (local) or the API (remote) says what is wrong, in its words.
        request = RegisterRequest.model_construct(
            name=name,
            source=source,
            kind=kind,  # type: ignore[arg-type]
            description=description,
            tags=tag,
            min_images_per_identity=min_images,
            align=align,
            aligner=aligner,
        )
        version = _register_remotely(client, request) if client else _register_locally(request)
    report = version.report
    extra = f", {version.pair_count} pairs" if kind == "verification" else ""
    console.print(
        f"{name}@{version.version} {version.status}: {version.identity_count} identities, "
        f"{version.image_count} images{extra} ({report.get('corrupt_count', 0)} corrupt files and "
        f"{report.get('small_identity_count', 0)} small identities skipped)"
    )
    alignment = report.get("alignment")
    if alignment:
        console.print(
            f"aligned with {alignment['aligner']}@{alignment['aligner_version']}: {alignment['aligned']} of "
            f"{alignment['attempted']} images aligned, {alignment['no_face']} without a face (skipped), "
            f"{alignment['several_faces']} with several faces (largest x most central kept)"
        )


def _register_locally(request: RegisterRequest) -> DatasetVersionDetail:
    with _stage_progress() as progress, local_session() as session:
        version, _created = service.register_dataset_version_audited(
            session,
            get_store(),
            actor="cli",
            source_label=request.source,
            name=request.name,
            source=request.source,
            kind=request.kind,
            description=request.description,
            tags=request.tags,
            min_images_per_identity=request.min_images_per_identity,
            progress=progress,
            align=request.align,
            aligner=request.aligner,
        )
        return DatasetVersionDetail.model_validate(version)


def _register_remotely(client: FacefleetClient, request: RegisterRequest) -> DatasetVersionDetail:
    """An s3:// URI is registered by the server itself; a local folder or archive is uploaded."""
    if request.source.startswith("s3://"):
        with console.status("the server is validating the dataset"):
            created = client.post("/v1/datasets", request.model_dump(), timeout=SLOW_REQUEST_TIMEOUT)
        return DatasetVersionDetail.model_validate(created)
    path = Path(request.source).expanduser()
    if not path.exists():
        raise InvalidInputError(
            f"{request.source} does not exist on this machine; in remote mode give a local folder or "
            "archive (it is uploaded) or an s3:// URI the server can read",
            field="source",
        )
    with tempfile.TemporaryDirectory(prefix="facefleet-upload-") as tmp, _progress_bar() as bar:
        archive = path if _uploadable(path) else _zip_folder(path, Path(tmp) / f"{request.name}.zip", bar)
        total_mib = max(1, math.ceil(archive.stat().st_size / MIB))
        upload = bar.add_task("uploading (MiB)", total=total_mib)
        validating: list[TaskID] = []

        def sent(done: int, total: int) -> None:
            bar.update(upload, completed=math.ceil(done / MIB))
            if done >= total and not validating:  # the server validates before it answers
                validating.append(bar.add_task("validating on the server", total=None))

        created = client.upload_dataset(
            archive,
            name=request.name,
            kind=request.kind,
            tags=request.tags,
            description=request.description,
            min_images_per_identity=request.min_images_per_identity,
            progress=sent,
            align=request.align,
            aligner=request.aligner,
        )
    return DatasetVersionDetail.model_validate(created)


def _uploadable(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(UPLOADABLE_SUFFIXES)


def _zip_folder(folder: Path, target: Path, bar: Progress) -> Path:
    """Zip a folder's files (stored, not compressed: images are compressed already) under its root."""
    if not folder.is_dir():
        raise InvalidInputError(
            f"{folder} is neither a folder nor a {'/'.join(UPLOADABLE_SUFFIXES)} archive", field="source"
        )
    root = folder.resolve()
    files = [path for path in sorted(root.rglob("*")) if path.is_file()]
    packing = bar.add_task("packing", total=len(files))
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for path in files:
            # A link out of the folder would upload files the user never meant to share.
            if path.resolve().is_relative_to(root):
                archive.write(path, path.relative_to(root).as_posix())
            bar.advance(packing)
    return target


@app.command("list")
def list_datasets(
    kind: str | None = typer.Option(None, "--kind", help=" | ".join(DATASET_KINDS)),
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """List datasets with their latest ready version."""
    with reported_errors(), connect(server) as client:
        if kind is not None and kind not in DATASET_KINDS:  # the same refusal in both modes
            raise InvalidInputError(
                f"--kind {kind!r} is unknown; use {', '.join(DATASET_KINDS)}", field="kind"
            )
        rows, total = _remote_rows(client, kind) if client else _local_rows(kind)
    if as_json:
        print_json([{**row.dataset.model_dump(mode="json"), "versions": row.version_count} for row in rows])
        return
    table = Table("name", "kind", "latest ready", "versions", "tags", title=f"{total} datasets")
    for row in rows:
        dataset = row.dataset
        latest = "-" if dataset.latest_version is None else str(dataset.latest_version)
        table.add_row(dataset.name, dataset.kind, latest, str(row.version_count), ", ".join(dataset.tags))
    console.print(table)


def _local_rows(kind: str | None) -> tuple[list[DatasetRow], int]:
    with local_session() as session:
        items, total = service.list_datasets(session, kind=kind, limit=1000, offset=0)
        latest = service.latest_ready_versions(session, [item.id for item in items])
        rows = [
            DatasetRow(
                DatasetOut.model_validate(item).model_copy(update={"latest_version": latest.get(item.id)}),
                len(service.list_versions(session, item.name)),
            )
            for item in items
        ]
    return rows, len(rows) if total is None else total  # None: more than the count cap match


def _remote_rows(client: FacefleetClient, kind: str | None) -> tuple[list[DatasetRow], int]:
    datasets = [DatasetOut.model_validate(item) for item in client.iter_pages("/v1/datasets", kind=kind)]
    rows = [
        DatasetRow(dataset, client.get(f"/v1/datasets/{segment(dataset.name)}/versions", limit=1)["total"])
        for dataset in datasets
    ]
    return rows, len(rows)


def _split_ref(ref: str) -> tuple[str, int | None]:
    name, _, version = ref.partition("@")
    if version and not version.isdigit():
        raise typer.BadParameter(f"{ref!r}: the version after '@' must be a number, e.g. faces@2")
    return name, int(version) if version else None


@app.command("show")
def show(
    ref: str = typer.Argument(..., help="NAME or NAME@VERSION (default: latest ready)."),
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """Show a dataset version and its validation report."""
    name, number = _split_ref(ref)
    with reported_errors(), connect(server) as client:
        version = _remote_version(client, name, number) if client else _local_version(name, number)
    if as_json:  # the API's DatasetVersionDetail: the version with its full validation report
        print_json(version)
        return
    _print_version(name, version)


def _local_version(name: str, number: int | None) -> DatasetVersionDetail:
    with local_session() as session:
        return DatasetVersionDetail.model_validate(service.get_version(session, name, number))


def _remote_version(client: FacefleetClient, name: str, number: int | None) -> DatasetVersionDetail:
    if number is None:
        number = DatasetOut.model_validate(client.get(f"/v1/datasets/{segment(name)}")).latest_version
        if number is None:  # the service's own words, so both modes read the same
            raise NotFoundError(f"dataset {name!r} has no ready version; register valid data first")
    return DatasetVersionDetail.model_validate(client.get(f"/v1/datasets/{segment(name)}/versions/{number}"))


def _print_version(name: str, version: DatasetVersionDetail) -> None:
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
