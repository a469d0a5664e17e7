"""Helpers for the scheduler tests: datasets on disk, a recording run starter, a movable clock."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from facefleet.platform.datasets.service import register_dataset_version
from facefleet.platform.db.models import ModelVersion, Run
from facefleet.platform.policies import service as policies
from facefleet.platform.policies.schemas import PolicyCreate
from facefleet.platform.store import ObjectStore
from tests.api.conftest import make_imagefolder, make_lfw_folder

TINY = {"backbone": "tiny", "steps": 2, "reversal": {"enabled": False}}
T0 = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@dataclass
class RecordingStarter:
    """The launcher's stand-in: gives the run a job id and records it; nothing trains."""

    started: list[int] = field(default_factory=list)
    fail: bool = False
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, session: Session, run: Run) -> None:
        if self.fail:
            raise RuntimeError("no cluster")
        if self.delay:
            threading.Event().wait(self.delay)
        run.launcher_job_id = f"job-{run.id}"
        with self.lock:
            self.started.append(run.id)


def register(
    engine: Engine,
    store: ObjectStore,
    tmp: Path,
    name: str,
    *,
    seed: int = 0,
    kind: str = "train",
    tags: tuple[str, ...] = (),
) -> None:
    source = (
        make_lfw_folder(tmp / f"{name}-{seed}")
        if kind == "verification"
        else make_imagefolder(tmp / f"{name}-{seed}", identities=2, images=2, seed=seed)
    )
    with Session(engine) as session:
        register_dataset_version(session, store, name=name, source=source, kind=kind, tags=tags)  # type: ignore[arg-type]
        session.commit()


def make_policy(engine: Engine, now: datetime = T0, **fields: object) -> int:
    body = {"triggers": ["manual"], "base_config": TINY, **fields}
    with Session(engine) as session:
        policy = policies.create_policy(session, spec=PolicyCreate.model_validate(body), now=now)
        session.commit()
        return policy.id


def policy_runs(engine: Engine, policy_id: int) -> list[Run]:
    with Session(engine) as session:
        return list(session.scalars(select(Run).where(Run.policy_id == policy_id).order_by(Run.id)))


def finish_run(
    engine: Engine,
    run_id: int,
    status: str = "succeeded",
    *,
    model: tuple[str, int] | None = None,
    accuracy: float | None = None,
    set_name: str = "lfw",
) -> None:
    """What the worker leaves when a run ends: its status and, on success, a registered model version."""
    with Session(engine) as session:
        run = session.get(Run, run_id)
        assert run is not None
        run.status = status
        if model:
            summary = {set_name: {"cosine": {"accuracy": accuracy}}} if accuracy is not None else {}
            session.add(
                ModelVersion(
                    name=model[0], version=model[1], run_id=run_id, artifacts={}, eval_summary=summary
                )
            )
        session.commit()
