"""Two scheduler replicas: on PostgreSQL (row locks, SKIP LOCKED) they never start the same run twice;
on SQLite one replica at a time holds the lease."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from facefleet.platform.db import migrate
from facefleet.platform.db.models import AuditEvent, Run
from facefleet.platform.db.session import make_engine
from facefleet.platform.policies import service as policies
from facefleet.platform.scheduler import Scheduler
from facefleet.platform.settings import get_settings
from facefleet.platform.store import ObjectStore
from tests.platform.scheduler_support import Clock, RecordingStarter, make_policy, register


@pytest.fixture
def pg_engine(postgres_server, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    url = postgres_server.create_database(f"sched_{uuid.uuid4().hex[:10]}")
    migrate.upgrade(url)
    monkeypatch.setenv("FACEFLEET_DATABASE_URL", url)
    get_settings.cache_clear()
    engine = make_engine(url)
    yield engine
    engine.dispose()


def _run_replicas(schedulers: list[Scheduler], ticks: int) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(schedulers))

    def loop(sched: Scheduler) -> None:
        try:
            barrier.wait()
            for _ in range(ticks):
                sched.tick()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(s,)) for s in schedulers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return errors


def test_two_replicas_on_postgres_never_double_start(
    pg_engine: Engine, local_store: ObjectStore, tmp_path: Path
) -> None:
    for index in range(3):
        register(pg_engine, local_store, tmp_path, f"faces-{index}", seed=index)
    event_policies = [
        make_policy(pg_engine, name=f"ev{i}", triggers=["dataset_added"], debounce_seconds=0)
        for i in range(4)
    ]
    manual_policies = [make_policy(pg_engine, name=f"man{i}", debounce_seconds=0) for i in range(4)]
    with Session(pg_engine) as session:
        for policy_id in manual_policies:
            policies.request_fire(session, policy_id=policy_id, requested_by="t")
        session.commit()
    starter = RecordingStarter(delay=0.02)  # a slow launcher widens any race window
    replicas = [Scheduler(pg_engine, owner=f"replica-{i}", start=starter) for i in range(2)]
    assert all(r.row_locks for r in replicas)
    assert _run_replicas(replicas, ticks=6) == []

    with Session(pg_engine) as session:
        runs = session.scalars(select(Run).order_by(Run.id)).all()
        per_policy = [r.policy_id for r in runs]
        assert sorted(per_policy) == sorted(event_policies + manual_policies)  # exactly one run per policy
        assert sorted(starter.started) == [r.id for r in runs]  # each run started exactly once
        assert all(r.launcher_job_id == f"job-{r.id}" for r in runs)
        creations = session.scalars(select(AuditEvent).where(AuditEvent.action == "runs.create")).all()
        for audit in creations:
            merged = audit.details["merged_triggers"]
            if audit.details["policy"].startswith("ev"):
                # each ready event reached each matching policy exactly once
                assert sorted(e["dataset"] for e in merged) == ["faces-0", "faces-1", "faces-2"]


def test_sqlite_replicas_take_turns_through_the_lease(sqlite_engine: Engine) -> None:
    clock = Clock()
    first = Scheduler(sqlite_engine, owner="a", start=RecordingStarter(), clock=clock, lease_seconds=30)
    second = Scheduler(sqlite_engine, owner="b", start=RecordingStarter(), clock=clock, lease_seconds=30)
    assert not first.tick().skipped
    assert second.tick().skipped
    clock.advance(10)
    assert not first.tick().skipped  # the holder renews
    clock.advance(31)  # the holder died: its lease expires and the other replica takes over
    assert not second.tick().skipped
    assert first.tick().skipped
