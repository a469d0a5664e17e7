"""Measures the quantities tests/nn/test_learning.py asserts, over seeds (run once per CPU capability).

    ATEN_CPU_CAPABILITY=default PYTHONPATH=. python scripts/spreads/learning.py 0 1 2 3 4
"""

from __future__ import annotations

import json
import sys
import time

import torch

from tests.nn.test_learning import STEPS, make_world, train


def main(seeds: list[int]) -> None:
    torch.set_num_threads(1)
    for seed in seeds:
        started = time.monotonic()
        world = make_world(seed=seed)
        aware, _, _ = train(world, crossing_p=0.0, switch_step=None, lambd=0.0, seed=seed + 1)
        naive, _, _ = train(world, crossing_p=1.0, switch_step=None, lambd=0.0, seed=seed + 1)
        reversal, before, after = train(world, crossing_p=0.0, switch_step=STEPS // 2, lambd=0.1, seed=seed + 1)
        row = {
            "capability": torch.backends.cpu.get_cpu_capability(),
            "seed": seed,
            "aware": aware,
            "naive": naive,
            "aware_minus_naive": aware - naive,
            "reversal": reversal,
            "before": before,
            "after": after,
            "seconds": round(time.monotonic() - started, 1),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main([int(s) for s in sys.argv[1:]] or [0, 1, 2, 3, 4])
