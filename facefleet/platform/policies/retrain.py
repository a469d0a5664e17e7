"""What a policy's run trains on, how models compare on verification sets, and the best combination so far."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from facefleet.platform.db.models import Dataset, DatasetVersion, ModelVersion, RetrainPolicy, Run
from facefleet.platform.policies.schemas import DatasetSelector
from facefleet.platform.runs.datasets import run_datasets

# (session, model version, verification set names, metric name) -> {set name: value}
Evaluator = Callable[[Session, ModelVersion, Sequence[str], str], dict[str, float]]


def selected_training_datasets(session: Session, policy: RetrainPolicy) -> list[str]:
    """Names of the training datasets that match the policy's selector and have a ready version."""
    selector = DatasetSelector.model_validate(policy.dataset_selector or {})
    ready = (
        select(Dataset)
        .where(
            Dataset.kind == "train",
            Dataset.id.in_(select(DatasetVersion.dataset_id).where(DatasetVersion.status == "ready")),
        )
        .order_by(Dataset.name)
    )
    return [d.name for d in session.scalars(ready) if selector.matches(d.name, list(d.tags or []))]


def event_matches(policy: RetrainPolicy, payload: dict[str, Any]) -> bool:
    """Does a ``dataset_version.ready`` event concern this policy (a selected or a monitored set)?"""
    name = str(payload.get("dataset", ""))
    if payload.get("kind", "train") == "verification":
        return name in (policy.verification_sets or [])
    selector = DatasetSelector.model_validate(policy.dataset_selector or {})
    return selector.matches(name, list(payload.get("tags") or []))


def _numeric(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _from_entry(entry: Any, metric: str) -> float | None:
    """``{metric: v}`` or, as the evaluator writes it, ``{mode: {metric: v}}`` with ``cosine`` preferred."""
    if not isinstance(entry, dict):
        return _numeric(entry)
    if (value := _numeric(entry.get(metric))) is not None:
        return value
    modes = sorted(entry, key=lambda mode: mode != "cosine")
    for mode in modes:
        if isinstance(entry[mode], dict) and (value := _numeric(entry[mode].get(metric))) is not None:
            return value
    return None


def metric_from_summary(summary: dict[str, Any], set_name: str, metric: str) -> float | None:
    """``metric`` for verification set ``set_name`` in an evaluation summary (nested or flat)."""
    for container in (summary, summary.get("evaluation"), summary.get("verification"), summary.get("eval")):
        if not isinstance(container, dict):
            continue
        if (value := _from_entry(container.get(set_name), metric)) is not None:
            return value
        for sep in ("/", "."):
            for key in (f"{set_name}{sep}{metric}", f"eval{sep}{set_name}{sep}cosine{sep}{metric}"):
                if (value := _numeric(container.get(key))) is not None:
                    return value
    return None


def summary_evaluator(
    _session: Session, model: ModelVersion, sets: Sequence[str], metric: str
) -> dict[str, float]:
    """The evaluation recorded when the model was registered (no recomputation)."""
    found = {name: metric_from_summary(model.eval_summary or {}, name, metric) for name in sets}
    return {name: value for name, value in found.items() if value is not None}


def model_scores(
    session: Session, model: ModelVersion, sets: Sequence[str], metric: str, evaluate: Evaluator
) -> dict[str, float]:
    """Scores on every set: from the model's summary where present, else from ``evaluate``."""
    scores = summary_evaluator(session, model, sets, metric)
    missing = [name for name in sets if name not in scores]
    if missing:
        scores.update(evaluate(session, model, missing, metric))
    return scores


def mean_score(scores: dict[str, float], sets: Sequence[str]) -> float | None:
    if not sets or any(name not in scores for name in sets):
        return None
    return sum(scores[name] for name in sets) / len(sets)


def should_promote(new: float | None, current: float | None) -> bool:
    """Promote when the new model has a score and beats the current production (or there is none)."""
    if new is None:
        return False
    return current is None or new > current


def run_dataset_labels(session: Session, run_id: int) -> list[str]:
    rows = run_datasets(session, [run_id], role="train")
    return [f"{dataset.name}:{version.version}" for _row, version, dataset in rows]


def combination_ranking(session: Session, policy: RetrainPolicy, limit: int = 5) -> list[dict[str, Any]]:
    """The policy's succeeded runs ranked by mean accuracy on its verification sets (best first)."""
    sets = list(policy.verification_sets or [])
    runs = session.scalars(select(Run).where(Run.policy_id == policy.id, Run.status == "succeeded")).all()
    ranked: list[dict[str, Any]] = []
    for run in runs:
        model = session.scalars(
            select(ModelVersion).where(ModelVersion.run_id == run.id).order_by(ModelVersion.version.desc())
        ).first()
        summary = dict(run.summary or {}) | dict(model.eval_summary if model else {})
        scores = {
            name: v
            for name in sets
            if (v := metric_from_summary(summary, name, policy.metric_name)) is not None
        }
        score = mean_score(scores, sets)
        if score is None:
            continue
        ranked.append(
            {
                "run_id": run.id,
                "datasets": run_dataset_labels(session, run.id),
                policy.metric_name: round(score, 6),
                "accuracy": round(score, 6),
                "per_set": scores,
                "model_version": model.version if model else None,
            }
        )
    ranked.sort(key=lambda item: (-item["accuracy"], item["run_id"]))
    return ranked[:limit]
