"""The retraining scheduler: turns triggers into runs, follows them to the end, promotes and notifies.

Each step is its own short transaction. Replicas coordinate through the database: on PostgreSQL rows are
claimed with ``SELECT ... FOR UPDATE SKIP LOCKED`` (policies, outbox events, queued runs, notifications);
SQLite has no row locks, so there one replica at a time holds the ``scheduler`` lease and works.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from facefleet.platform import audit, notifications
from facefleet.platform.db.base import as_utc
from facefleet.platform.db.models import OutboxEvent, RetrainPolicy, Run
from facefleet.platform.db.session import session_scope
from facefleet.platform.errors import FacefleetError, NotFoundError
from facefleet.platform.inspections.service import purge_expired_attempts
from facefleet.platform.leases import acquire_lease
from facefleet.platform.models import service as registry
from facefleet.platform.policies import outcomes, retrain
from facefleet.platform.policies.service import add_trigger, next_cron_time
from facefleet.platform.runs import service as runs_service
from facefleet.platform.settings import Settings, get_settings
from facefleet.platform.store import ObjectStore, get_store

log = logging.getLogger("facefleet.scheduler")

READY_EVENT = "dataset_version.ready"
ACTOR = "scheduler"
RunStarter = Callable[[Session, Run], None]
Clock = Callable[[], datetime]


def default_start(session: Session, run: Run) -> None:
    runs_service.start_run(session, run)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class TickReport:
    """What one tick did (for logs and tests)."""

    skipped: bool = False
    events: int = 0
    triggered: list[tuple[int, str]] = field(default_factory=list)
    created_runs: list[int] = field(default_factory=list)
    started_runs: list[int] = field(default_factory=list)
    finished_runs: list[int] = field(default_factory=list)
    promoted: list[str] = field(default_factory=list)
    notifications_sent: int = 0
    attempts_expired: int = 0


class Scheduler:
    """One replica. Call ``tick()`` repeatedly (``run_forever`` does, every ``interval`` seconds)."""

    def __init__(
        self,
        engine: Engine,
        *,
        owner: str | None = None,
        start: RunStarter | None = None,
        evaluate: retrain.Evaluator | None = None,
        clock: Clock | None = None,
        settings: Settings | None = None,
        lease_seconds: float = 60.0,
        store: ObjectStore | None = None,
    ) -> None:
        self.engine = engine
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.start = start or default_start
        self.evaluate = evaluate or retrain.summary_evaluator
        self.clock = clock or utcnow
        self.settings = settings or get_settings()
        self.lease_seconds = lease_seconds
        self.row_locks = engine.dialect.name == "postgresql"
        self._store = store

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            self._store = get_store(self.settings)
        return self._store

    # ------------------------------------------------------------------ driving

    def tick(self) -> TickReport:
        report = TickReport()
        now = self.clock()
        if not self.row_locks and not self._hold_lease(now):
            report.skipped = True
            return report
        steps: list[Callable[[datetime, TickReport], None]] = [
            self.consume_dataset_events,
            self.check_cron,
            self.check_metrics,
            self.follow_active_runs,
            self.fire_due_policies,
            self.start_queued_runs,
            self.deliver_notifications,
            self.purge_expired_attempts,
        ]
        for step in steps:
            try:
                step(now, report)
            except Exception:  # noqa: BLE001 - one failing step must not stop the others or the loop
                log.exception("scheduler step %s failed", step.__name__)
        return report

    def run_forever(self, interval: float = 5.0, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        log.info("scheduler %s started (tick every %.1fs)", self.owner, interval)
        while not stop.is_set():
            report = self.tick()
            if report.created_runs or report.finished_runs or report.promoted:
                log.info("tick: %s", report)
            stop.wait(interval)

    def _hold_lease(self, now: datetime) -> bool:
        with session_scope(self.engine) as session:
            return acquire_lease(
                session, name="scheduler", owner=self.owner, ttl_seconds=self.lease_seconds, now=now
            )

    def _claim(self, stmt: Any) -> Any:
        """Lock the selected rows; other replicas skip them instead of waiting (PostgreSQL)."""
        return stmt.with_for_update(skip_locked=True) if self.row_locks else stmt

    # ------------------------------------------------------------------ triggers

    def consume_dataset_events(self, now: datetime, report: TickReport) -> None:
        """Each ready dataset version triggers the enabled policies it matches, exactly once."""
        with session_scope(self.engine) as session:
            events = session.scalars(
                self._claim(
                    select(OutboxEvent)
                    .where(OutboxEvent.kind == READY_EVENT, OutboxEvent.processed_at.is_(None))
                    .order_by(OutboxEvent.id)
                    .limit(200)
                )
            ).all()
            if not events:
                return
            # Policies are locked without skipping: a trigger must never be lost to a busy row.
            stmt = select(RetrainPolicy).where(RetrainPolicy.enabled.is_(True)).order_by(RetrainPolicy.id)
            policies = session.scalars(stmt.with_for_update() if self.row_locks else stmt).all()
            for event in events:
                for policy in policies:
                    if "dataset_added" in (policy.triggers or []) and retrain.event_matches(
                        policy, event.payload
                    ):
                        add_trigger(
                            policy,
                            kind="dataset_added",
                            now=now,
                            detail={
                                "dataset": event.payload.get("dataset"),
                                "version": event.payload.get("version"),
                            },
                        )
                        report.triggered.append((policy.id, "dataset_added"))
                event.processed_at = now
                report.events += 1

    def check_cron(self, now: datetime, report: TickReport) -> None:
        with session_scope(self.engine) as session:
            policies = session.scalars(
                self._claim(
                    select(RetrainPolicy)
                    .where(RetrainPolicy.enabled.is_(True), RetrainPolicy.cron.is_not(None))
                    .order_by(RetrainPolicy.id)
                )
            ).all()
            for policy in policies:
                if "schedule" not in (policy.triggers or []) or not policy.cron:
                    continue
                due = as_utc(policy.next_cron_at)
                if due is not None and due <= now:
                    add_trigger(
                        policy, kind="schedule", now=now, detail={"cron": policy.cron, "due": due.isoformat()}
                    )
                    report.triggered.append((policy.id, "schedule"))
                if due is None or due <= now:
                    policy.next_cron_at = next_cron_time(policy.cron, now)

    def check_metrics(self, now: datetime, report: TickReport) -> None:
        """Re-evaluate the production model on the monitored sets; a score under the threshold triggers."""
        with session_scope(self.engine) as session:
            policies = session.scalars(
                self._claim(
                    select(RetrainPolicy)
                    .where(RetrainPolicy.enabled.is_(True), RetrainPolicy.metric_threshold.is_not(None))
                    .order_by(RetrainPolicy.id)
                )
            ).all()
            for policy in policies:
                last = as_utc(policy.last_metric_check_at)
                if "metric_drop" not in (policy.triggers or []) or (
                    last is not None and now - last < timedelta(seconds=policy.metric_check_interval_seconds)
                ):
                    continue
                policy.last_metric_check_at = now
                drops = self._metric_drops(session, policy)
                if drops:
                    add_trigger(policy, kind="metric_drop", now=now, detail={"below_threshold": drops})
                    report.triggered.append((policy.id, "metric_drop"))

    def _metric_drops(self, session: Session, policy: RetrainPolicy) -> dict[str, float]:
        try:
            production = registry.get_model_version(session, policy.model_name, "production")
        except NotFoundError:
            return {}  # nothing in production yet: nothing to monitor
        sets = list(policy.verification_sets or [])
        scores = self.evaluate(session, production, sets, policy.metric_name)
        threshold = float(policy.metric_threshold or 0.0)
        return {name: value for name, value in scores.items() if value < threshold}

    # ------------------------------------------------------------------ runs

    def fire_due_policies(self, now: datetime, report: TickReport) -> None:
        """A due pending trigger (debounce window over) becomes one queued run, if none is in flight."""
        with session_scope(self.engine) as session:
            policies = session.scalars(
                self._claim(
                    select(RetrainPolicy)
                    .where(
                        RetrainPolicy.enabled.is_(True),
                        RetrainPolicy.pending_trigger.is_not(None),
                        RetrainPolicy.active_run_id.is_(None),
                    )
                    .order_by(RetrainPolicy.id)
                )
            ).all()
            for policy in policies:
                since = as_utc(policy.pending_since) or now
                if now < since + timedelta(seconds=policy.debounce_seconds):
                    continue
                run_id = self._create_policy_run(session, policy, now)
                if run_id is not None:
                    report.created_runs.append(run_id)

    def _create_policy_run(self, session: Session, policy: RetrainPolicy, now: datetime) -> int | None:
        events = list(policy.pending_events or [])
        trigger = policy.pending_trigger or "manual"
        policy.pending_trigger, policy.pending_since, policy.pending_events = None, None, []
        policy.last_fired_at = now
        datasets = retrain.selected_training_datasets(session, policy)
        try:
            with session.begin_nested():
                if not datasets:
                    raise FacefleetError("no ready training dataset matches the policy's dataset selector")
                run = runs_service.create_run(
                    session,
                    dataset_names_or_version_ids=datasets,
                    verification_sets=policy.verification_sets,
                    config=policy.base_config,
                    trigger=trigger,
                    created_by=f"{ACTOR}:policy:{policy.name}",
                    policy_id=policy.id,
                )
        except FacefleetError as exc:
            # The trigger is consumed either way: retrying an impossible run every tick helps nobody.
            log.warning("policy %s could not start a run: %s", policy.name, exc.message)
            audit.record(
                session,
                ACTOR,
                "policies.fire_failed",
                "policy",
                policy.id,
                {"error": exc.message, "triggers": events},
            )
            return None
        policy.active_run_id = run.id
        audit.record(
            session,
            ACTOR,
            "runs.create",
            "run",
            run.id,
            {"policy": policy.name, "trigger": trigger, "merged_triggers": events, "datasets": datasets},
        )
        return run.id

    def start_queued_runs(self, now: datetime, report: TickReport) -> None:
        """Hand committed, never-started policy runs to the launcher, each exactly once."""
        with session_scope(self.engine) as session:
            runs = session.scalars(
                self._claim(
                    select(Run)
                    .where(
                        Run.status == "queued",
                        Run.policy_id.is_not(None),
                        Run.launcher_job_id.is_(None),
                        Run.cancel_requested.is_(False),
                    )
                    .order_by(Run.id)
                    .limit(20)
                )
            ).all()
            for run in runs:
                try:
                    with session.begin_nested():
                        self.start(session, run)
                except Exception as exc:  # noqa: BLE001 - a launcher failure fails the run, not the loop
                    log.exception("could not start run %s", run.id)
                    runs_service.mark_finished(session, run, "failed", f"the launcher failed: {exc}")
                    continue
                report.started_runs.append(run.id)

    def follow_active_runs(self, now: datetime, report: TickReport) -> None:
        """When a policy's run ends: free the policy, auto-promote if it won, notify the best combination."""
        with session_scope(self.engine) as session:
            policies = session.scalars(
                self._claim(
                    select(RetrainPolicy)
                    .where(RetrainPolicy.active_run_id.is_not(None))
                    .order_by(RetrainPolicy.id)
                )
            ).all()
            for policy in policies:
                run = session.get(Run, policy.active_run_id)
                if run is not None and run.status in runs_service.ACTIVE and run.launcher_job_id:
                    run = runs_service.reconcile_active(session, run.id)  # a job that died silently
                if run is not None and run.status not in runs_service.FINISHED:
                    continue
                policy.active_run_id = None
                if run is None:
                    continue
                promoted = None
                if run.status == "succeeded":
                    promoted = outcomes.auto_promote(
                        session, policy, run, evaluate=self.evaluate, settings=self.settings, now=now
                    )
                outcomes.notify_run_finished(session, policy, run, promoted, settings=self.settings, now=now)
                report.finished_runs.append(run.id)
                if promoted:
                    report.promoted.append(promoted)

    def deliver_notifications(self, now: datetime, report: TickReport) -> None:
        with session_scope(self.engine) as session:
            report.notifications_sent += notifications.deliver_due(session, now=now, settings=self.settings)

    def purge_expired_attempts(self, now: datetime, report: TickReport) -> None:
        """Attempts past their retention: objects and rows deleted, one audit event per sweep."""
        with session_scope(self.engine) as session:
            report.attempts_expired += purge_expired_attempts(
                session, self.store, now=now, actor=ACTOR, lock_rows=self.row_locks
            )
