"""The run lifecycle: legal transitions, timestamps, progress, the worker's plan and its end of a run."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from facefleet.platform.runs import lifecycle, service
from facefleet.platform.runs.datasets import class_offsets, run_datasets
from facefleet.platform.runs.lifecycle import IllegalTransitionError
from facefleet.platform.store import ObjectStore
from tests.workers.train_helpers import register_tiny_datasets, tiny_config


@pytest.fixture
def run_id(session: Session, local_store: ObjectStore, tmp_path: Path) -> int:
    names, verif = register_tiny_datasets(session, local_store, tmp_path / "synth", num_datasets=2)
    run = service.create_run(
        session, dataset_names_or_version_ids=names, verification_sets=[verif], config=tiny_config()
    )
    return run.id


def test_transition_table_is_the_documented_machine() -> None:
    assert set(lifecycle.TRANSITIONS) == set(lifecycle.STATUSES)
    assert lifecycle.TRANSITIONS["queued"] == {"starting", "failed", "cancelled"}
    assert lifecycle.TRANSITIONS["starting"] == {"running", "failed", "cancelled"}
    assert lifecycle.TRANSITIONS["running"] == {"succeeded", "failed", "cancelled"}
    assert all(not lifecycle.TRANSITIONS[status] for status in lifecycle.FINISHED)
    for current, new in [("queued", "running"), ("queued", "succeeded"), ("starting", "succeeded")]:
        with pytest.raises(IllegalTransitionError, match=f"is {current}; it cannot become {new}"):
            lifecycle.check_transition(1, current, new)
    with pytest.raises(IllegalTransitionError, match="nothing"):
        lifecycle.check_transition(1, "failed", "running")


def test_class_offsets_are_consecutive_in_order() -> None:
    assert class_offsets([8, 3, 5]) == [0, 8, 11]
    assert class_offsets([]) == []


def test_a_run_from_plan_to_success(session: Session, run_id: int) -> None:
    plan = lifecycle.training_plan(session, run_id)
    assert [(d.class_offset, d.num_classes) for d in plan.train] == [(0, 8), (8, 8)]
    assert len(plan.verification) == 1 and plan.total_steps == service.get_run(session, run_id).total_steps
    assert [row.role for row, _, _ in run_datasets(session, [run_id])] == ["train", "train", "verification"]

    lifecycle.mark_starting(session, run_id)
    run = service.get_run(session, run_id)
    assert (run.status, run.stage, run.started_at is not None) == ("starting", "starting workers", True)
    with pytest.raises(IllegalTransitionError, match="only a queued run can start"):
        lifecycle.training_plan(session, run_id)
    with pytest.raises(IllegalTransitionError):
        lifecycle.finish(session, run_id, "succeeded")  # not before it runs

    assert lifecycle.mark_running(session, run_id) is True
    assert lifecycle.mark_running(session, run_id) is False  # a restarted rank 0: no change
    lifecycle.report_progress(session, run_id, step=3, total_steps=6, stage="training", eta_seconds=4.0)
    session.refresh(run)
    assert (run.status, run.progress, run.eta_seconds, run.heartbeat_at is not None) == (
        "running",
        0.5,
        4.0,
        True,
    )

    assert lifecycle.finish(session, run_id, "succeeded", summary={"ok": 1}) == "succeeded"
    session.refresh(run)
    assert (run.status, run.stage, run.progress, run.summary) == ("succeeded", "succeeded", 1.0, {"ok": 1})
    assert run.finished_at is not None
    assert lifecycle.finish(session, run_id, "failed", error="late") is None  # recorded once
    with pytest.raises(IllegalTransitionError):
        lifecycle.mark_starting(session, run_id)
    with pytest.raises(IllegalTransitionError):
        lifecycle.mark_finished(session, run, "cancelled")


def test_queued_run_cannot_be_marked_running(session: Session, run_id: int) -> None:
    with pytest.raises(IllegalTransitionError, match="is queued; it cannot become running"):
        lifecycle.mark_running(session, run_id)


def test_failure_after_a_cancel_request_is_a_cancel(session: Session, run_id: int) -> None:
    lifecycle.mark_starting(session, run_id)
    service.get_run(session, run_id).cancel_requested = True
    assert lifecycle.finish(session, run_id, "failed", error="stopped") == "cancelled"
    assert lifecycle.mark_running(session, run_id) is False  # a cancelled run stays cancelled
    assert service.get_run(session, run_id).status == "cancelled"
