"""The demo's pieces that need no Ray: the baseline differs only where it should, the verdict is honest."""

from __future__ import annotations

from facefleet.demo import DEMO_CONFIG, DemoRun, baseline_config, plot_locations, verdict
from facefleet.platform.runs.schemas import TrainingConfig


def _run(label: str, accuracy: float | None) -> DemoRun:
    evaluation = {} if accuracy is None else {"verif": {"cosine": {"accuracy": accuracy}}}
    return DemoRun(label=label, run_id=1, status="succeeded", seconds=1.0, summary={"evaluation": evaluation})


def test_baseline_only_switches_off_the_dataset_aware_parts() -> None:
    ours = TrainingConfig.model_validate(DEMO_CONFIG)
    baseline = TrainingConfig.model_validate(baseline_config(DEMO_CONFIG))
    assert (ours.head.crossing_p, ours.reversal.enabled) == (1e-4, True)
    assert (baseline.head.crossing_p, baseline.reversal.enabled) == (1.0, False)
    changed = {key for key in ours.model_dump() if ours.model_dump()[key] != baseline.model_dump()[key]}
    assert changed == {"head", "reversal", "model_name"}
    assert baseline.head.model_copy(update={"crossing_p": 1e-4}) == ours.head
    assert DEMO_CONFIG["head"]["crossing_p"] == 1e-4  # the baseline did not mutate the demo config


def test_verdict_says_when_the_method_loses() -> None:
    assert verdict([_run("ours", 0.7), _run("naive", 0.6)], "verif") is True
    assert verdict([_run("ours", 0.6), _run("naive", 0.6)], "verif") is False
    assert verdict([_run("ours", None), _run("naive", 0.6)], "verif") is None


def test_plot_locations_are_paths_for_a_local_store() -> None:
    assert plot_locations("file:///data/store", ["runs/1/plots/roc.png"]) == [
        "/data/store/runs/1/plots/roc.png"
    ]
    assert plot_locations("s3://b/p", ["runs/1/plots/roc.png"]) == ["s3://b/p/runs/1/plots/roc.png"]
