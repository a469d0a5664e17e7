"""Measures the overlap finder on tests/nn/test_learning.py's world (3 datasets, every person in two of them
under other labels), trained by that test's loop, over seeds: what tests/nn/test_overlaps_learned.py asserts.

PYTHONPATH=. python scripts/spreads/overlaps_world.py 0 1 2 3 4
"""

from __future__ import annotations

import json
import sys
import time

import torch

from tests.nn.test_overlaps_learned import measure


def main(seeds: list[int]) -> None:
    torch.set_num_threads(1)
    for seed in seeds:
        started = time.monotonic()
        row = {"capability": torch.backends.cpu.get_cpu_capability(), "seed": seed, **measure(seed)}
        row["seconds"] = round(time.monotonic() - started, 1)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main([int(s) for s in sys.argv[1:]] or [0, 1, 2, 3, 4])
