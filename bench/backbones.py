"""Benchmark: one training step (forward + backward + SGD step) per backbone, at the real-face bench's size.

What `bench/real_faces.py` trains on 2 cores: batch 32 at 48 px, one thread per worker. Each net's step is
timed in rounds that alternate between the nets (a noisy machine slows them alike), and the median over the
rounds is divided by `tiny`'s, measured in the same process. The learning side of the choice (validation
accuracy per net) is `bench/real_faces.py --backbone NAME`; this is its cost.
Run: .venv/bin/python bench/backbones.py [--rounds 5] [--steps 10] [--mobilefacenet]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facefleet.nn.backbones import Backbone, get_backbone  # noqa: E402

BATCH, SIZE = 32, 48


def nets(with_mobilefacenet: bool) -> dict[str, Callable[[], Backbone]]:
    chosen: dict[str, Callable[[], Backbone]] = {
        "tiny (baseline)": lambda: get_backbone("tiny", input_size=SIZE),
        "tiny_gdc": lambda: get_backbone("tiny_gdc", input_size=SIZE),
        "tiny, width 32": lambda: get_backbone("tiny", input_size=SIZE, width=32),
        "tiny_gdc, width 32": lambda: get_backbone("tiny_gdc", input_size=SIZE, width=32),
    }
    if with_mobilefacenet:
        chosen["mobilefacenet"] = lambda: get_backbone("mobilefacenet", input_size=SIZE)
    return chosen


def step_timer(net: Backbone) -> Callable[[int], float]:
    """Seconds per step of `steps` training steps (the loss: mean squared embedding, enough for backward)."""
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    optimiser = torch.optim.SGD(net.parameters(), lr=0.01)

    def run(steps: int) -> float:
        started = time.perf_counter()
        for _ in range(steps):
            optimiser.zero_grad()
            net(x).pow(2).mean().backward()
            optimiser.step()
        return (time.perf_counter() - started) / steps

    run(2)  # warm-up
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="steps per net per round")
    parser.add_argument("--mobilefacenet", action="store_true", help="also mobilefacenet (~20x tiny)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    timers = {name: step_timer(build().train()) for name, build in nets(args.mobilefacenet).items()}
    seconds: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(args.rounds):
        for name, timer in timers.items():
            seconds[name].append(timer(args.steps))
    baseline = statistics.median(seconds["tiny (baseline)"])
    print(f"training step, batch {BATCH} at {SIZE} px, one thread; median of {args.rounds} rounds")
    print("| backbone | ms per step | ratio to tiny |")
    print("|---|---|---|")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"| {name} | {median * 1000:.1f} | {median / baseline:.2f}x |")


if __name__ == "__main__":
    main()
