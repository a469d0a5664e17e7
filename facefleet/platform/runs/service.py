"""Runs service: create, start, follow and cancel training runs. The database is the truth for run status.

``create_run_audited`` and ``cancel_run_audited`` are the use cases the API and the CLI's local mode call:
validation, the change, the audit event, and for a new run the commit-then-launch step that marks the run
failed when the launcher cannot start it."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from facefleet.platform import audit
from facefleet.platform.db.models import Dataset, DatasetVersion, Run, RunDataset, RunMetric
from facefleet.platform.errors import ConflictError, InvalidInputError, NotFoundError
from facefleet.platform.runs.datasets import class_offsets, resolve_dataset_version, run_datasets
from facefleet.platform.runs.lifecycle import ACTIVE as ACTIVE
from facefleet.platform.runs.lifecycle import FINISHED as FINISHED
from facefleet.platform.runs.lifecycle import mark_finished as mark_finished
from facefleet.platform.runs.schemas import MAX_STEPS, RunCreate, RunDatasetView, RunView, TrainingConfig

if TYPE_CHECKING:
    from facefleet.platform.runs.launchers import Launcher

# ACTIVE, FINISHED and mark_finished are lifecycle.py's (the statuses' one home), re-exported for callers.

RunStarter = Callable[[Session, Run], object]


def parse_config(config: TrainingConfig | dict[str, Any] | None) -> TrainingConfig:
    """A validated TrainingConfig, or InvalidInputError naming the first bad field."""
    if isinstance(config, TrainingConfig):
        return config
    try:
        return TrainingConfig.model_validate(config or {})
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "config"
        raise InvalidInputError(f"invalid training config at {where}: {first['msg']}", field=where) from None


def check_runnable(config: TrainingConfig, *, train_dataset_count: int, local_machine: bool) -> None:
    """Reject configs that cannot run, before anything starts (cross-checks the schema cannot do alone)."""
    if config.kind == "landmarks":
        check_landmarks_runnable(config)
        return
    # nn is pure torch; importing it here (lazily) is the one place the platform needs to know the registry.
    from facefleet.nn.backbones import get_backbone, list_backbones

    known = list_backbones()
    if config.backbone not in known:
        raise InvalidInputError(
            f"unknown backbone {config.backbone!r}; choose one of {', '.join(sorted(known))}",
            field="backbone",
        )
    if config.reversal.enabled and train_dataset_count < 2 and config.kind != "distill":
        raise InvalidInputError(
            "gradient reversal needs at least two training datasets (a dataset classifier over one dataset "
            "learns nothing); add datasets or set reversal.enabled=false",
            field="reversal.enabled",
        )
    try:
        with torch_meta_device():
            get_backbone(config.backbone, embedding_dim=config.embedding_dim, input_size=config.input_size)
    except ValueError as error:
        raise InvalidInputError(str(error), field="input_size") from None
    if local_machine:
        check_fits_this_machine(config)


def machine_cpus() -> int:
    """CPUs the local launcher's Ray may use (the same count ``init_ray`` gives it)."""
    return os.cpu_count() or 1


def check_fits_this_machine(config: TrainingConfig) -> None:
    """The local launcher trains on this machine: the workers' CPUs and GPUs must exist here."""
    scaling = config.scaling
    workers = max(scaling.num_workers, 1)
    cpus = workers * scaling.cpus_per_worker
    available_cpus = machine_cpus()
    if cpus > available_cpus:
        raise InvalidInputError(
            f"the run asks for {workers} worker(s) x {scaling.cpus_per_worker:g} CPUs = {cpus:g} CPUs but "
            f"this machine has {available_cpus}; lower scaling.num_workers or scaling.cpus_per_worker, or "
            "use the ray/kuberay launcher",
            field="scaling.num_workers",
        )
    gpus = scaling.gpus_per_worker * workers
    if gpus:
        import torch

        available = torch.cuda.device_count()
        if gpus > available:
            raise InvalidInputError(
                f"the run asks for {gpus:g} GPUs but this machine has {available}; lower "
                "scaling.gpus_per_worker or scaling.num_workers, or use the ray/kuberay launcher",
                field="scaling.gpus_per_worker",
            )


def check_landmarks_runnable(config: TrainingConfig) -> None:
    from facefleet.nn.landmarks import LandmarkNet

    try:
        LandmarkNet(input_size=config.input_size, grid=config.landmarks.grid, width=config.landmarks.width)
    except ValueError as error:
        raise InvalidInputError(str(error), field="input_size") from None
    if config.scaling.gpus_per_worker:
        raise InvalidInputError(
            "landmarks runs train on CPU workers; set scaling.gpus_per_worker=0",
            field="scaling.gpus_per_worker",
        )


def torch_meta_device() -> Any:
    """Build modules without allocating their weights (a shape check, not a model)."""
    import torch

    return torch.device("meta")


def check_pair_batches(config: TrainingConfig, identity_counts: Sequence[int]) -> None:
    """Balanced pair batches take P identities of one dataset per worker: some dataset must have enough."""
    if not config.biometric.enabled or config.biometric.pair_source != "batch":
        return
    per_batch = config.batch_size // config.biometric.images_per_identity
    needed = per_batch * max(config.scaling.num_workers, 1)
    if max(identity_counts, default=0) < needed:
        raise InvalidInputError(
            f"pair batches of {per_batch} identities on {max(config.scaling.num_workers, 1)} workers need "
            f"a dataset with at least {needed} identities; the largest has {max(identity_counts, default=0)}"
            ": lower batch_size or scaling.num_workers, or raise biometric.images_per_identity",
            field="batch_size",
        )


def check_head_shards(config: TrainingConfig, num_classes: int) -> None:
    """A sharded head puts at least one class on every worker: refuse more shards than classes."""
    workers = config.scaling.num_workers
    if config.head.sharded and workers > num_classes:
        raise InvalidInputError(
            f"head.sharded splits {num_classes} classes across {workers} workers, but every shard needs at "
            "least one class: lower scaling.num_workers or set head.sharded=false",
            field="head.sharded",
        )


def _ready_version(session: Session, ref: str | int, kind: str) -> tuple[DatasetVersion, Dataset]:
    version = resolve_dataset_version(session, ref)
    dataset = session.get(Dataset, version.dataset_id)
    assert dataset is not None
    if version.status != "ready":
        raise InvalidInputError(
            f"dataset {dataset.name} v{version.version} is {version.status}, not ready", field="datasets"
        )
    if dataset.kind != kind:
        raise InvalidInputError(
            f"dataset {dataset.name} is a {dataset.kind} dataset; expected {kind}",
            field="verification_sets" if kind == "verification" else "datasets",
        )
    return version, dataset


def total_steps_for(config: TrainingConfig, image_count: int) -> int:
    if config.steps is not None:
        return config.steps
    per_step = config.batch_size * max(config.scaling.num_workers, 1)
    steps = max(1, math.ceil((config.epochs or 1.0) * image_count / per_step))
    if steps > MAX_STEPS:
        raise InvalidInputError(
            f"{config.epochs:g} epochs over {image_count} images are {steps} steps, more than {MAX_STEPS}; "
            "lower epochs or set steps",
            field="epochs",
        )
    return steps


def run_dataset_rows(
    train: Sequence[DatasetVersion], verification: Sequence[DatasetVersion]
) -> list[RunDataset]:
    """Training versions take consecutive class ranges in order (design §5.1); verification sets follow."""
    offsets = class_offsets([version.identity_count for version in train])
    rows = [
        RunDataset(
            position=position,
            role="train",
            dataset_version_id=version.id,
            class_offset=offset,
            num_classes=version.identity_count,
        )
        for position, (version, offset) in enumerate(zip(train, offsets, strict=True))
    ]
    rows += [
        RunDataset(position=position, role="verification", dataset_version_id=version.id)
        for position, version in enumerate(verification, start=len(train))
    ]
    return rows


def create_run(
    session: Session,
    *,
    dataset_names_or_version_ids: Sequence[str | int],
    verification_sets: Sequence[str | int] = (),
    config: TrainingConfig | dict[str, Any] | None,
    trigger: str = "manual",
    created_by: str = "",
    policy_id: int | None = None,
    name: str = "",
) -> Run:
    """A queued run over training dataset versions (class offsets in order) and verification sets."""
    training_config = parse_config(config)
    inspection: list[DatasetVersion] = []
    if training_config.kind == "distill":
        from facefleet.platform.runs.distill import resolve_distill_inputs

        training_config, inspection = resolve_distill_inputs(session, training_config)
    if not dataset_names_or_version_ids:
        raise InvalidInputError("a run needs at least one training dataset", field="datasets")
    dataset_kind = "landmarks" if training_config.kind == "landmarks" else "train"
    train = [_ready_version(session, ref, dataset_kind) for ref in dataset_names_or_version_ids]
    if len({version.id for version, _ in train}) != len(train):
        raise InvalidInputError("the same dataset version is listed twice", field="datasets")
    if training_config.kind == "landmarks" and verification_sets:
        raise InvalidInputError(
            "a landmarks run evaluates on the held-out split of its landmarks datasets; "
            "give no verification sets",
            field="verification_sets",
        )
    verification = [_ready_version(session, ref, "verification") for ref in verification_sets]
    from facefleet.platform.settings import get_settings

    settings = get_settings()
    check_runnable(
        training_config, train_dataset_count=len(train), local_machine=settings.launcher == "local"
    )
    check_pair_batches(training_config, [version.identity_count for version, _ in train])
    check_head_shards(training_config, sum(version.identity_count for version, _ in train))
    from facefleet.platform.runs.launchers import get_launcher

    # Last, being the slow one: the ray launcher asks the cluster whether it can run this facefleet.
    get_launcher(settings.launcher, settings).preflight()
    run = Run(
        name=name or "+".join(dataset.name for _, dataset in train),
        status="queued",
        trigger=trigger,
        policy_id=policy_id,
        config=training_config.model_dump(mode="json", by_alias=True),
        launcher=settings.launcher,
        created_by=created_by,
        total_steps=total_steps_for(training_config, sum(v.image_count for v, _ in train)),
    )
    rows = run_dataset_rows([v for v, _ in train], [v for v, _ in verification])
    if inspection:
        from facefleet.platform.runs.distill import inspection_rows

        rows += inspection_rows(inspection, start=len(rows))
    run.datasets = rows
    session.add(run)
    session.flush()
    return run


def create_run_audited(
    session: Session, body: RunCreate, *, actor: str, starter: RunStarter | None = None
) -> RunView:
    """Queue a run from a validated request, record it, and with ``start`` hand it to the launcher.

    The worker reads the run from the database, so it is committed before ``starter`` (default
    ``start_run``: the configured launcher) runs; a launcher that fails leaves the run ``failed`` with why
    in ``error`` (the caller commits that), never an exception from the launcher."""
    run = create_run(
        session,
        dataset_names_or_version_ids=body.datasets,
        verification_sets=body.verification_sets,
        config=body.config,
        created_by=actor,
        name=body.name,
    )
    details = {"datasets": [str(d) for d in body.datasets], "start": body.start}
    audit.record(session, actor, "runs.create", "run", run.id, details)
    if body.start:
        session.commit()
        try:
            (starter or start_run)(session, run)
        except Exception as exc:  # noqa: BLE001 - the run is recorded as failed; the caller sees why
            mark_finished(session, run, "failed", f"the launcher could not start the run: {exc}")
    return run_view(session, get_run(session, run.id))


def get_run(session: Session, run_id: int) -> Run:
    run = session.scalars(select(Run).where(Run.id == run_id).options(selectinload(Run.datasets))).first()
    if run is None:
        raise NotFoundError(f"no run with id {run_id}")
    return run


def list_runs(session: Session, *, status: str | None = None, limit: int = 50, offset: int = 0) -> list[Run]:
    query = select(Run).options(selectinload(Run.datasets)).order_by(Run.id.desc())
    if status:
        query = query.where(Run.status == status)
    return list(session.scalars(query.limit(limit).offset(offset)))


def run_view(session: Session, run: Run) -> RunView:
    return run_views(session, [run])[0]


def run_views(session: Session, runs: Sequence[Run]) -> list[RunView]:
    """Views of ``runs`` with their datasets named, in one query for the whole list (no N+1)."""
    datasets: dict[int, list[RunDatasetView]] = {run.id: [] for run in runs}
    for row, version, dataset in run_datasets(session, [run.id for run in runs]):
        datasets[row.run_id].append(
            RunDatasetView(
                position=row.position,
                role=row.role,
                dataset_version_id=row.dataset_version_id,
                dataset=dataset.name,
                version=version.version,
                class_offset=row.class_offset,
                num_classes=row.num_classes,
            )
        )
    fields = [field for field in RunView.model_fields if field != "datasets"]
    return [
        RunView(**{field: getattr(run, field) for field in fields}, datasets=datasets[run.id]) for run in runs
    ]


def start_run(session: Session, run: Run, launcher: Launcher | None = None) -> Run:
    """Hand a committed, queued run to its launcher; the worker moves it to starting/running."""
    from facefleet.platform.runs.launchers import get_launcher

    if run.status != "queued":
        raise ConflictError(f"run {run.id} is {run.status}; only queued runs can be started")
    launcher = launcher or get_launcher(run.launcher)
    run.launcher = launcher.name
    run.launcher_job_id = launcher.start(run)
    session.flush()
    return run


def cancel_run(
    session: Session, run_id: int, *, force: bool = False, launcher: Launcher | None = None
) -> Run:
    """Ask a run to stop: the worker stops at its next check and marks it cancelled. ``force`` also stops
    the job through its launcher at once. A run whose job is already gone is marked cancelled now."""
    from facefleet.platform.runs.launchers import get_launcher

    run = get_run(session, run_id)
    if run.status in FINISHED:
        raise ConflictError(f"run {run_id} already {run.status}; nothing to cancel")
    run.cancel_requested = True
    if run.launcher_job_id is None:
        mark_finished(session, run, "cancelled")
        return run
    launcher = launcher or get_launcher(run.launcher)
    if force:
        launcher.cancel(run.launcher_job_id)
        mark_finished(session, run, "cancelled", "cancelled: the job was stopped")
    elif launcher.status(run.launcher_job_id) == "finished":
        mark_finished(session, run, "cancelled", "cancelled; the job had already stopped")
    session.flush()
    return run


def cancel_run_audited(session: Session, run_id: int, *, force: bool, actor: str) -> RunView:
    """``cancel_run`` and its audit event."""
    run = cancel_run(session, run_id, force=force)
    audit.record(session, actor, "runs.cancel", "run", run_id, {"force": force})
    return run_view(session, run)


def record_metrics(session: Session, run_id: int, step: int, metrics: dict[str, float]) -> None:
    """One row per (name, value); non-finite values are skipped rather than stored as NaN."""
    session.add_all(
        RunMetric(run_id=run_id, step=step, name=name, value=float(value))
        for name, value in metrics.items()
        if math.isfinite(float(value))
    )
    session.flush()


def run_metrics(
    session: Session, run_id: int, names: Iterable[str] | None = None
) -> dict[str, list[tuple[int, float]]]:
    """Series per metric name: [(step, value), ...] in step order."""
    query = select(RunMetric.name, RunMetric.step, RunMetric.value).where(RunMetric.run_id == run_id)
    if names is not None:
        query = query.where(RunMetric.name.in_(list(names)))
    series: dict[str, list[tuple[int, float]]] = {}
    for name, step, value in session.execute(query.order_by(RunMetric.name, RunMetric.step, RunMetric.id)):
        series.setdefault(name, []).append((step, value))
    return series


def latest_metrics(session: Session, run_id: int) -> dict[str, float]:
    """The newest value of every metric of a run."""
    newest = (
        select(RunMetric.name, func.max(RunMetric.id).label("id"))
        .where(RunMetric.run_id == run_id)
        .group_by(RunMetric.name)
        .subquery()
    )
    rows = session.execute(select(RunMetric.name, RunMetric.value).join(newest, RunMetric.id == newest.c.id))
    return {name: value for name, value in rows}


def is_cancel_requested(session: Session, run_id: int) -> bool:
    return bool(session.scalar(select(Run.cancel_requested).where(Run.id == run_id)))


def reconcile_run(session: Session, run_id: int, *, launcher: Launcher | None = None) -> Run:
    """Mark an active run failed when its job is gone without having said how it ended (e.g. killed -9)."""
    from facefleet.platform.runs.launchers import get_launcher

    run = get_run(session, run_id)
    if run.status in FINISHED or run.launcher_job_id is None:
        return run
    launcher = launcher or get_launcher(run.launcher)
    if launcher.status(run.launcher_job_id) == "finished":
        session.refresh(run)  # the worker may have finished between our read and the launcher's answer
        if run.status not in FINISHED:
            status = "cancelled" if run.cancel_requested else "failed"
            run.stage = status
            mark_finished(session, run, status, vanished_error(launcher, run))
    return run


def vanished_error(launcher: Launcher, run: Run) -> str:
    """The error of a run whose job ended without a word from the worker, with what the launcher knows."""
    error = "the worker exited without recording the end of the run"
    try:
        detail = launcher.failure(run)
    except Exception as exc:  # noqa: BLE001 - the run is marked either way; say why there is no detail
        detail = f"(the {launcher.name} launcher could not say why: {exc})"
    return f"{error}: {detail}" if detail else error


def reconcile_active(session: Session, run_id: int) -> Run:
    """``reconcile_run`` for readers (API, CLI): a launcher that cannot answer leaves the run as it is."""
    import logging

    try:
        return reconcile_run(session, run_id)
    except Exception:  # noqa: BLE001 - reading a run must not fail because its launcher is unreachable
        logging.getLogger(__name__).warning("could not check the job of run %s", run_id, exc_info=True)
        return get_run(session, run_id)
