"""What happens when a policy's run ends: auto-promotion and the notifications (with the best combination)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from facefleet.platform import audit, notifications
from facefleet.platform.db.models import ModelVersion, RetrainPolicy, Run
from facefleet.platform.errors import NotFoundError
from facefleet.platform.models import service as registry
from facefleet.platform.policies import retrain
from facefleet.platform.settings import Settings

ACTOR = "scheduler"
PRODUCTION = "production"


def _production(session: Session, name: str) -> ModelVersion | None:
    try:
        return registry.get_model_version(session, name, PRODUCTION)
    except NotFoundError:
        return None


def auto_promote(
    session: Session,
    policy: RetrainPolicy,
    run: Run,
    *,
    evaluate: retrain.Evaluator,
    settings: Settings,
    now: datetime,
) -> str | None:
    """Point ``production`` at the run's model when the policy allows it and the model beats the current
    production on the policy's verification sets (scores from the model summaries, else ``evaluate``)."""
    if not policy.auto_promote:
        return None
    new = session.scalars(
        select(ModelVersion).where(ModelVersion.run_id == run.id).order_by(ModelVersion.version.desc())
    ).first()
    if new is None:
        _declined(session, policy, run, None, f"run {run.id} registered no model version", {})
        return None
    sets = list(policy.verification_sets or [])
    new_scores = retrain.model_scores(session, new, sets, policy.metric_name, evaluate)
    new_score = retrain.mean_score(new_scores, sets)
    current = _production(session, new.name)
    current_score = None
    if current is not None:
        if current.id == new.id:
            return None
        current_score = retrain.mean_score(
            retrain.model_scores(session, current, sets, policy.metric_name, evaluate), sets
        )
    if not retrain.should_promote(new_score, current_score):
        scores = {"score": new_score, "production_score": current_score, "verification_sets": sets}
        _declined(session, policy, run, new, _decline_reason(policy, new, current, new_score, sets), scores)
        return None
    registry.set_alias(session, new.name, PRODUCTION, new.version)
    details = {
        "from": current.version if current else None,
        "to": new.version,
        "score": new_score,
        "previous_score": current_score,
        "verification_sets": sets,
    }
    audit.record(session, ACTOR, "models.promote", "model", f"{new.name}:{new.version}", details)
    notify_policy(
        session,
        policy,
        "model.promoted",
        {
            "summary": f"{new.name} v{new.version} promoted to production",
            "model": new.name,
            "version": new.version,
            "policy": policy.name,
            **details,
        },
        settings=settings,
        now=now,
    )
    return f"{new.name}:{new.version}"


def _decline_reason(
    policy: RetrainPolicy,
    new: ModelVersion,
    current: ModelVersion | None,
    new_score: float | None,
    sets: list[str],
) -> str:
    metric = policy.metric_name
    if not sets:
        return "the policy names no verification sets to compare models on"
    if new_score is None:
        return f"{new.name} v{new.version} has no {metric} score on every set of {', '.join(sets)}"
    production = f"production v{current.version}" if current is not None else "production"
    return f"{new.name} v{new.version} scored {metric} {new_score:.4f}, not better than {production}"


def _declined(
    session: Session,
    policy: RetrainPolicy,
    run: Run,
    model: ModelVersion | None,
    reason: str,
    details: dict[str, Any],
) -> None:
    """Record why auto-promote left production where it was (`models.promote_declined` in the audit log)."""
    target = f"{model.name}:{model.version}" if model is not None else f"{policy.model_name}:"
    audit.record(
        session,
        ACTOR,
        "models.promote_declined",
        "model",
        target,
        {"reason": reason, "policy": policy.name, "run_id": run.id, **details},
    )


def notify_run_finished(
    session: Session,
    policy: RetrainPolicy,
    run: Run,
    promoted: str | None,
    *,
    settings: Settings,
    now: datetime,
) -> None:
    """run.succeeded|failed|cancelled, with the best dataset combination the policy has seen so far."""
    ranking = retrain.combination_ranking(session, policy)
    notify_policy(
        session,
        policy,
        f"run.{run.status}",
        {
            "summary": f"run {run.id} of policy {policy.name} {run.status}",
            "run_id": run.id,
            "status": run.status,
            "policy": policy.name,
            "trigger": run.trigger,
            "error": run.error,
            "datasets": retrain.run_dataset_labels(session, run.id),
            "promoted": promoted,
            "best_combination": ranking[0] if ranking else None,
            "ranking": ranking,
            "url": f"{settings.public_url.rstrip('/')}/v1/runs/{run.id}",
        },
        settings=settings,
        now=now,
    )


def notify_policy(
    session: Session,
    policy: RetrainPolicy,
    event: str,
    payload: dict[str, Any],
    *,
    settings: Settings,
    now: datetime,
) -> None:
    """Queue ``event`` for the policy's webhooks and e-mail addresses (and the global ones)."""
    notify = policy.notify or {}
    notifications.enqueue(
        session,
        event=event,
        payload=payload,
        webhooks=notify.get("webhooks", []),
        emails=notify.get("emails", []),
        settings=settings,
        now=now,
    )
