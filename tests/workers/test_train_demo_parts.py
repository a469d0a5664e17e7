"""The demo's pieces that need no Ray: the baseline differs only where it should, the verdict is honest."""

from __future__ import annotations

from facefleet.demo import (
    DEMO_CONFIG,
    DemoRun,
    baseline_config,
    describe_comparison,
    metric_wins,
    model_to_deploy,
    plot_locations,
    verdict,
)
from facefleet.platform.runs.schemas import TrainingConfig


def _run(label: str, accuracy: float | None, eer: float = 0.2) -> DemoRun:
    if accuracy is None:
        return DemoRun(label=label, run_id=1, status="failed", seconds=1.0, summary={})
    cosine = {"accuracy": accuracy, "auc": accuracy, "eer": eer, "tar_at_operating_far": 0.5}
    return DemoRun(
        label=label,
        run_id=1,
        status="succeeded",
        seconds=1.0,
        summary={"evaluation": {"verif": {"cosine": cosine}}},
    )


def test_baseline_only_switches_off_the_dataset_aware_parts() -> None:
    ours = TrainingConfig.model_validate(DEMO_CONFIG)
    baseline = TrainingConfig.model_validate(baseline_config(DEMO_CONFIG))
    assert (ours.head.crossing_p, ours.reversal.enabled) == (0.1, True)
    assert (baseline.head.crossing_p, baseline.reversal.enabled) == (1.0, False)
    changed = {key for key in ours.model_dump() if ours.model_dump()[key] != baseline.model_dump()[key]}
    assert changed == {"head", "reversal", "model_name"}
    assert baseline.head.model_copy(update={"crossing_p": 0.1}) == ours.head
    assert DEMO_CONFIG["head"]["crossing_p"] == 0.1  # the baseline did not mutate the demo config


def test_verdict_says_when_the_method_loses() -> None:
    assert verdict([_run("ours", 0.7), _run("naive", 0.6)], "verif") is True
    assert verdict([_run("ours", 0.6), _run("naive", 0.6)], "verif") is False
    assert verdict([_run("ours", None), _run("naive", 0.6)], "verif") is None


def test_comparison_names_every_metric_the_method_does_not_win() -> None:
    wins = metric_wins([_run("ours", 0.6, eer=0.1), _run("naive", 0.7, eer=0.2)], "verif")
    assert wins == {"accuracy": False, "auc": False, "eer": True, "tar_at_operating_far": False}
    text = describe_comparison(wins)
    assert "better on eer" in text and "not better on accuracy, auc, tar_at_operating_far" in text
    assert "no comparison" in describe_comparison(None)


def test_plot_locations_are_paths_for_a_local_store() -> None:
    assert plot_locations("file:///data/store", ["runs/1/plots/roc.png"]) == [
        "/data/store/runs/1/plots/roc.png"
    ]
    assert plot_locations("s3://b/p", ["runs/1/plots/roc.png"]) == ["s3://b/p/runs/1/plots/roc.png"]


def test_the_model_with_the_higher_operating_point_tar_is_deployed() -> None:
    ours, naive = _run("ours", 0.9), _run("naive", 0.8)
    ours.summary["model"], naive.summary["model"] = {"name": "a", "version": 1}, {"name": "b", "version": 1}
    naive.summary["evaluation"]["verif"]["cosine"]["tar_at_operating_far"] = 0.7
    assert model_to_deploy([ours, naive], "verif") is naive
    assert model_to_deploy([_run("ours", None), _run("naive", None)], "verif") is None
