"""Measures what tests/terminal/test_adaptation.py asserts, over model seeds (run once per CPU capability).

    ATEN_CPU_CAPABILITY=default PYTHONPATH=. python scripts/spreads/adaptation.py 0 1 2 3 4

One JSON line per (seed, guard): guard on = the default terminal, off = the seed's method (SEED_METHOD).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from facefleet.terminal.guard import GuardConfig
from tests.terminal.test_adaptation import measure


def main(seeds: list[int]) -> None:
    torch.set_num_threads(1)
    for seed in seeds:
        for enabled in (True, False):
            started = time.monotonic()
            with tempfile.TemporaryDirectory() as folder:
                row = measure(Path(folder), GuardConfig(enabled=enabled), seed)
            row = {
                "capability": torch.backends.cpu.get_cpu_capability(),
                "seed": seed,
                "guard": enabled,
                **{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()},
                "seconds": round(time.monotonic() - started, 1),
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main([int(s) for s in sys.argv[1:]] or [0, 1, 2, 3, 4])
