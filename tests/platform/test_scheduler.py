"""The scheduler on each database: every trigger kind, debounce, one run in flight, auto-promote."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from facefleet.platform.db.models import AuditEvent, ModelAlias, ModelVersion, Notification, OutboxEvent
from facefleet.platform.policies import service as policies
from facefleet.platform.scheduler import Scheduler
from facefleet.platform.store import ObjectStore
from tests.platform.scheduler_support import (
    Clock,
    RecordingStarter,
    finish_run,
    make_policy,
    policy_runs,
    register,
)


def scheduler(engine: Engine, clock: Clock, starter: RecordingStarter, **kwargs: object) -> Scheduler:
    return Scheduler(engine, start=starter, clock=clock, **kwargs)  # type: ignore[arg-type]


def test_dataset_triggers_merge_within_the_debounce_window(
    engine: Engine, local_store: ObjectStore, tmp_path: Path
) -> None:
    clock, starter = Clock(), RecordingStarter()
    watching = make_policy(
        engine,
        name="faces",
        triggers=["dataset_added"],
        debounce_seconds=60,
        dataset_selector={"glob": "faces-*", "tags": ["extra"]},
    )
    other = make_policy(engine, name="manual-only")
    sched = scheduler(engine, clock, starter)
    register(engine, local_store, tmp_path, "faces-a", seed=1)
    assert sched.tick().triggered == [(watching, "dataset_added")]
    clock.advance(30)
    register(engine, local_store, tmp_path, "faces-b", seed=2)
    register(engine, local_store, tmp_path, "unrelated", seed=3)
    register(engine, local_store, tmp_path, "tagged", seed=4, tags=("extra",))
    report = sched.tick()
    assert report.events == 3 and report.created_runs == []
    clock.advance(31)
    report = sched.tick()
    runs = policy_runs(engine, watching)
    assert len(runs) == 1 and report.created_runs == [runs[0].id] and starter.started == [runs[0].id]
    assert runs[0].trigger == "dataset_added" and runs[0].created_by == "scheduler:policy:faces"
    assert policy_runs(engine, other) == []
    with Session(engine) as session:
        audit = session.scalars(select(AuditEvent).where(AuditEvent.action == "runs.create")).one()
        assert [e["dataset"] for e in audit.details["merged_triggers"]] == ["faces-a", "faces-b", "tagged"]
        assert audit.details["datasets"] == ["faces-a", "faces-b", "tagged"]
        assert session.scalar(select(func.count()).where(OutboxEvent.processed_at.is_(None))) == 0


def test_never_two_runs_in_flight_and_explicit_requests_skip_debounce(
    engine: Engine, local_store: ObjectStore, tmp_path: Path
) -> None:
    clock, starter = Clock(), RecordingStarter()
    register(engine, local_store, tmp_path, "faces-a")
    policy_id = make_policy(engine, name="p", debounce_seconds=3600)
    sched = scheduler(engine, clock, starter)
    with Session(engine) as session:
        policies.request_fire(session, policy_id=policy_id, requested_by="test", now=clock())
        session.commit()
    first = sched.tick().created_runs
    assert len(first) == 1 and policy_runs(engine, policy_id)[0].trigger == "manual"
    with Session(engine) as session:
        policies.request_fire(session, policy_id=policy_id, requested_by="test", now=clock.advance(5))
        session.commit()
    assert sched.tick().created_runs == []  # the first run is still in flight
    finish_run(engine, first[0], "failed")
    report = sched.tick()
    assert report.finished_runs == first and len(report.created_runs) == 1
    assert [r.status for r in policy_runs(engine, policy_id)] == ["failed", "queued"]


def test_cron_trigger(engine: Engine, local_store: ObjectStore, tmp_path: Path) -> None:
    clock, starter = Clock(), RecordingStarter()
    register(engine, local_store, tmp_path, "faces-a")
    policy_id = make_policy(
        engine, name="nightly", triggers=["schedule"], cron="30 12 * * *", debounce_seconds=0
    )
    sched = scheduler(engine, clock, starter)
    clock.advance(29 * 60)
    assert sched.tick().created_runs == []
    clock.advance(61)
    assert len(sched.tick().created_runs) == 1
    runs = policy_runs(engine, policy_id)
    assert [r.trigger for r in runs] == ["schedule"]
    with Session(engine) as session:
        policy = policies.get_policy(session, policy_id=policy_id)
        assert policies.as_utc(policy.next_cron_at).day == 24  # type: ignore[union-attr]


def test_metric_drop_trigger_is_checked_on_its_interval(
    engine: Engine, local_store: ObjectStore, tmp_path: Path
) -> None:
    clock, starter = Clock(), RecordingStarter()
    register(engine, local_store, tmp_path, "faces-a")
    register(engine, local_store, tmp_path, "lfw", kind="verification")
    policy_id = make_policy(
        engine,
        name="watch",
        triggers=["metric_drop"],
        verification_sets=["lfw"],
        metric_threshold=0.8,
        metric_check_interval_seconds=600,
        debounce_seconds=0,
        model_name="faces",
    )
    scores = {"lfw": 0.95}
    calls: list[int] = []

    def evaluate(session, model, sets, metric):  # type: ignore[no-untyped-def]
        calls.append(model.version)
        return {name: scores[name] for name in sets}

    sched = scheduler(engine, clock, starter, evaluate=evaluate)
    assert sched.tick().triggered == []  # no production model yet: nothing to monitor
    with Session(engine) as session:
        model = ModelVersion(name="faces", version=1, artifacts={}, eval_summary={})
        session.add(model)
        session.flush()
        session.add(ModelAlias(name="faces", alias="production", model_version_id=model.id))
        session.commit()
    clock.advance(601)
    assert sched.tick().triggered == [] and calls == [1]
    scores["lfw"] = 0.7
    clock.advance(60)
    assert sched.tick().triggered == [] and calls == [1]  # not yet due again
    clock.advance(600)
    report = sched.tick()
    assert report.triggered == [(policy_id, "metric_drop")] and len(report.created_runs) == 1
    assert policy_runs(engine, policy_id)[0].trigger == "metric_drop"


def test_auto_promote_only_when_the_new_model_is_better(
    engine: Engine, local_store: ObjectStore, tmp_path: Path
) -> None:
    clock, starter = Clock(), RecordingStarter()
    register(engine, local_store, tmp_path, "faces-a")
    register(engine, local_store, tmp_path, "lfw", kind="verification")
    policy_id = make_policy(
        engine,
        name="auto",
        verification_sets=["lfw"],
        auto_promote=True,
        model_name="faces",
        debounce_seconds=0,
        notify={"webhooks": ["http://127.0.0.1:9/x"]},
    )
    sched = scheduler(engine, clock, starter)

    def fire_and_finish(version: int, accuracy: float) -> dict:
        with Session(engine) as session:
            policies.request_fire(session, policy_id=policy_id, requested_by="t", now=clock.advance(1))
            session.commit()
        run_id = sched.tick().created_runs[0]
        finish_run(engine, run_id, model=("faces", version), accuracy=accuracy)
        return vars(sched.tick())

    assert fire_and_finish(1, 0.80)["promoted"] == ["faces:1"]  # nothing in production yet
    assert fire_and_finish(2, 0.90)["promoted"] == ["faces:2"]
    assert fire_and_finish(3, 0.85)["promoted"] == []
    with Session(engine) as session:
        production = session.get(ModelAlias, ("faces", "production"))
        assert session.get(ModelVersion, production.model_version_id).version == 2  # type: ignore[union-attr]
        finished = session.scalars(
            select(Notification).where(Notification.event == "run.succeeded").order_by(Notification.id)
        ).all()
        last = finished[-1].payload
        assert last["best_combination"]["accuracy"] == 0.9 and last["best_combination"]["datasets"] == [
            "faces-a:1"
        ]
        assert [r["accuracy"] for r in last["ranking"]] == [0.9, 0.85, 0.8]
        promoted = session.scalars(select(Notification).where(Notification.event == "model.promoted")).all()
        assert [n.payload["version"] for n in promoted] == [1, 2]


def test_launch_failures_and_impossible_runs_do_not_block_the_policy(
    engine: Engine, local_store: ObjectStore, tmp_path: Path
) -> None:
    clock, starter = Clock(), RecordingStarter(fail=True)
    policy_id = make_policy(engine, name="p", debounce_seconds=0, dataset_selector={"names": ["faces-a"]})
    sched = scheduler(engine, clock, starter)
    with Session(engine) as session:
        policies.request_fire(session, policy_id=policy_id, requested_by="t", now=clock())
        session.commit()
    assert sched.tick().created_runs == []  # no dataset matches yet
    with Session(engine) as session:
        failed = session.scalars(select(AuditEvent).where(AuditEvent.action == "policies.fire_failed")).one()
        assert "no ready training dataset" in failed.details["error"]
        assert policies.get_policy(session, policy_id=policy_id).pending_trigger is None
    register(engine, local_store, tmp_path, "faces-a")
    with Session(engine) as session:
        policies.request_fire(session, policy_id=policy_id, requested_by="t", now=clock.advance(1))
        session.commit()
    sched.tick()
    runs = policy_runs(engine, policy_id)
    assert [r.status for r in runs] == ["failed"] and "no cluster" in (runs[0].error or "")
    report = sched.tick()
    assert report.finished_runs == [runs[0].id]
    with Session(engine) as session:
        assert policies.get_policy(session, policy_id=policy_id).active_run_id is None
