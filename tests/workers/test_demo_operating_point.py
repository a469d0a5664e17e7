"""The demo deploys the model whose card operating point (single-view scores, as terminals score) accepts
more genuine pairs; runs recorded before the operating point existed fall back to the fused cosine TAR."""

from __future__ import annotations

from facefleet.demo import DemoRun, model_to_deploy


def _run(label: str, fused_tar: float, card_tar: float | None) -> DemoRun:
    summary = {
        "evaluation": {"verif": {"cosine": {"tar_at_operating_far": fused_tar}}},
        "model": {"name": label, "version": 1},
    }
    if card_tar is not None:
        summary["operating_point"] = {"set_name": "verif", "tar": card_tar}
    return DemoRun(label=label, run_id=1, status="succeeded", seconds=1.0, summary=summary)


def test_the_card_operating_point_decides_which_model_is_deployed() -> None:
    ours, naive = _run("ours", fused_tar=0.9, card_tar=0.4), _run("naive", fused_tar=0.5, card_tar=0.6)
    assert model_to_deploy([ours, naive], "verif") is naive
    old_ours, old_naive = _run("ours", 0.9, None), _run("naive", 0.5, None)
    assert model_to_deploy([old_ours, old_naive], "verif") is old_ours
