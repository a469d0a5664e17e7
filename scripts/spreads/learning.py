"""Measures the quantities tests/nn/test_learning.py asserts, over seeds (run once per CPU capability).

    ATEN_CPU_CAPABILITY=default PYTHONPATH=. python scripts/spreads/learning.py 0 1 2 3 4

Seed s: world s, training seed s + 1 (the test uses s = 0). One JSON line per seed.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from tests.nn.test_learning import STEPS, K, held_out_metrics, make_world, style_agreement, train


def main(seeds: list[int]) -> None:
    torch.set_num_threads(1)
    for seed in seeds:
        started = time.monotonic()
        world = make_world(seed=seed)
        row: dict[str, object] = {"capability": torch.backends.cpu.get_cpu_capability(), "seed": seed}
        for label, crossing_p in (("aware", 0.0), ("naive", 1.0)):
            net = train(world, crossing_p=crossing_p, switch_step=None, lambd=0.0, seed=seed + 1).net
            for pairs in (600, 4000):
                metrics = held_out_metrics(world, net, seed=99, pairs=pairs)
                row[f"{label}_acc{pairs}"] = metrics.accuracy
                row[f"{label}_auc{pairs}"] = metrics.auc
            row[f"{label}_style"] = style_agreement(world, net, seed=98)
        reversal = train(world, crossing_p=0.0, switch_step=STEPS // 2, lambd=0.1, seed=seed + 1)
        row["reversal_acc600"] = held_out_metrics(world, reversal.net, seed=99).accuracy
        row["before"], row["after"] = reversal.stage1_domain_accuracy, reversal.final_domain_accuracy
        row["after_excess_share"] = (reversal.final_domain_accuracy - 1 / K) / (
            reversal.stage1_domain_accuracy - 1 / K
        )
        row["seconds"] = round(time.monotonic() - started, 1)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main([int(s) for s in sys.argv[1:]] or [0, 1, 2, 3, 4])
