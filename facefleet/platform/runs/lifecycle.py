"""The run lifecycle, in one place: statuses, their legal transitions, timestamps and progress.

    queued -> starting -> running -> succeeded
    queued | starting | running -> failed | cancelled

A run is created ``queued`` (runs/service.py). The worker (workers/train.py) reads its ``training_plan``,
``mark_starting`` before the Ray workers start, rank 0 calls ``mark_running`` once training begins and
``report_progress`` as it goes, and the worker ends the run with ``finish``. The control plane ends runs with
``mark_finished`` (a launcher that cannot start a run, a cancel, a job that vanished). Nothing leaves a
finished status; any other change raises IllegalTransitionError. No other module writes ``Run.status``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from facefleet.platform.db.models import Run
from facefleet.platform.errors import ConflictError, InvalidInputError, NotFoundError
from facefleet.platform.runs.datasets import run_datasets
from facefleet.platform.runs.schemas import TrainingConfig

STATUSES = ("queued", "starting", "running", "succeeded", "failed", "cancelled")
ACTIVE = ("queued", "starting", "running")
FINISHED = ("succeeded", "failed", "cancelled")
TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"starting", "failed", "cancelled"}),
    "starting": frozenset({"running", "failed", "cancelled"}),
    "running": frozenset({"succeeded", "failed", "cancelled"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}


class IllegalTransitionError(ConflictError):
    """A status change the lifecycle does not allow (e.g. a finished run started again)."""


def now() -> datetime:
    """The lifecycle's timestamps: naive UTC, as the database columns store them."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def check_transition(run_id: int, current: str, new: str) -> None:
    if new not in TRANSITIONS.get(current, frozenset()):
        allowed = ", ".join(sorted(TRANSITIONS.get(current, ()))) or "nothing (it has finished)"
        raise IllegalTransitionError(
            f"run {run_id} is {current}; it cannot become {new} (from {current}: {allowed})", field="status"
        )


def _run(session: Session, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise NotFoundError(f"no run with id {run_id}")
    return run


@dataclass(frozen=True)
class PlannedDataset:
    """One dataset version of a run, with its class range (train) as stored when the run was created."""

    role: str
    dataset_version_id: int
    dataset: str
    version: int
    manifest_key: str
    class_offset: int
    num_classes: int
    image_count: int


@dataclass(frozen=True)
class TrainingPlan:
    """What a worker needs to start a queued run, read in one place."""

    run_id: int
    config: TrainingConfig
    total_steps: int
    train: list[PlannedDataset]
    verification: list[PlannedDataset]


def training_plan(session: Session, run_id: int) -> TrainingPlan:
    """The queued run's config, step count and datasets (every version ready); refused for any other."""
    run = _run(session, run_id)
    if run.status != "queued":
        raise IllegalTransitionError(f"run {run_id} is {run.status}; only a queued run can start")
    planned: list[PlannedDataset] = []
    for row, version, dataset in run_datasets(session, [run_id]):
        if version.status != "ready" or not version.manifest_key:
            raise InvalidInputError(
                f"dataset version {dataset.name}@{version.version} is '{version.status}', not 'ready'",
                field="datasets",
            )
        planned.append(
            PlannedDataset(
                role=row.role,
                dataset_version_id=version.id,
                dataset=dataset.name,
                version=version.version,
                manifest_key=version.manifest_key,
                class_offset=row.class_offset,
                num_classes=row.num_classes,
                image_count=version.image_count,
            )
        )
    return TrainingPlan(
        run_id=run_id,
        config=TrainingConfig.model_validate(run.config),
        total_steps=run.total_steps,
        train=[entry for entry in planned if entry.role == "train"],
        verification=[entry for entry in planned if entry.role == "verification"],
    )


def mark_starting(session: Session, run_id: int, *, stage: str = "starting workers") -> None:
    """queued -> starting, stamped ``started_at``."""
    run = _run(session, run_id)
    check_transition(run_id, run.status, "starting")
    run.status, run.started_at, run.stage = "starting", now(), stage
    session.flush()


def mark_running(session: Session, run_id: int) -> bool:
    """starting -> running (rank 0, when training begins); True when this call moved it.

    A worker restarted by Ray finds the run running already, and a cancel recorded while the workers were
    starting has finished it: both leave the run as it is (False). A queued run cannot be running."""
    moved = session.execute(
        update(Run).where(Run.id == run_id, Run.status == "starting").values(status="running")
    )
    if getattr(moved, "rowcount", 0):
        return True
    status = session.scalar(select(Run.status).where(Run.id == run_id))
    if status is None:
        raise NotFoundError(f"no run with id {run_id}")
    if status != "running" and status not in FINISHED:
        check_transition(run_id, status, "running")
    return False


def report_progress(
    session: Session,
    run_id: int,
    *,
    step: int,
    total_steps: int,
    stage: str | None = None,
    eta_seconds: float | None = None,
) -> None:
    """Step, progress fraction, ETA, stage and heartbeat of an active run."""
    run = _run(session, run_id)
    run.step, run.total_steps = step, total_steps
    run.progress = min(1.0, step / total_steps) if total_steps else 0.0
    run.eta_seconds = eta_seconds
    if stage is not None:
        run.stage = stage
    run.heartbeat_at = now()
    session.flush()


def mark_finished(session: Session, run: Run, status: str, error: str | None = None) -> None:
    """End an active run now (the control plane: launcher failure, cancel, a vanished job)."""
    check_transition(run.id, run.status, status)
    run.status = status
    run.error = error
    run.finished_at = now()
    session.flush()


def finish(
    session: Session,
    run_id: int,
    status: str,
    *,
    error: str | None = None,
    summary: dict[str, Any] | None = None,
) -> str | None:
    """The worker records the end of a run once; the status recorded, or None when it had finished already.

    A failure after a cancel request counts as cancelled. The write is conditional: a cancel committed
    meanwhile (e.g. `cancel --force`, whose transaction is still open when the stopped worker gets here)
    is not overwritten."""
    run = session.get(Run, run_id)
    if run is None or run.status in FINISHED:
        return None
    if status == "failed" and run.cancel_requested:
        status = "cancelled"
    check_transition(run_id, run.status, status)
    values: dict[str, Any] = {"status": status, "stage": status, "error": error, "finished_at": now()}
    if summary is not None:
        values["summary"] = summary
    if status == "succeeded":
        values["progress"] = 1.0
    session.execute(update(Run).where(Run.id == run_id, Run.status.not_in(FINISHED)).values(**values))
    return status
