"""Benchmark: the dataset-aware head (block-wise logits) vs a masked full-softmax of the same loss, on CPU.

C = 200,000 classes, D = 512, N = 256, K = 4 equal datasets, ArcFace, forward+backward.
Times: all variants run in one process, interleaved round by round (order rotated), so a load change on a
shared machine hits them alike; each round gives a ratio to the baseline, and the table shows the medians.
Peak memory: each variant once more in its own subprocess, as the rise of its max RSS over two steps from
weights and batch allocated (the weight gradient is set to None before each step, as zero_grad() does).
Run: .venv/bin/python bench/heads.py [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from facefleet.nn.heads import DatasetAwareMarginHead, margin_target_cos

CLASSES, DIM, BATCH, DATASETS = 200_000, 512, 256, 4
S, M2 = 64.0, 0.5
VARIANTS = ("masked_full", "head", "head_crossing_1e-4")


def masked_full_softmax_loss(
    weight: torch.Tensor,
    x: torch.Tensor,
    labels: torch.Tensor,
    dataset_index: torch.Tensor,
    class_dataset: torch.Tensor,
) -> torch.Tensor:
    """The same dataset-aware ArcFace loss computed the direct way: an N×C logit matrix with a mask."""
    cos = F.normalize(x, dim=1) @ F.normalize(weight, dim=1).t()
    target = margin_target_cos(cos.gather(1, labels[:, None]), "arcface", 1.0, M2, 0.0)
    logits = (S * cos).scatter(1, labels[:, None], S * target)
    mask = class_dataset[None, :] == dataset_index[:, None]
    return F.cross_entropy(logits.masked_fill(~mask, -math.inf), labels)


def make_steps(variants: tuple[str, ...]) -> dict[str, Callable[[], float]]:
    """One forward+backward closure per variant, all on the same weight and batch."""
    torch.manual_seed(0)
    per = CLASSES // DATASETS
    dataset_index = torch.arange(BATCH) % DATASETS
    labels = dataset_index * per + torch.randint(0, per, (BATCH,))
    class_dataset = torch.arange(CLASSES) // per
    x = torch.randn(BATCH, DIM, requires_grad=True)
    # one weight shared by every variant; a head's memory run keeps the head's own weight, so no second
    # [C, D] tensor is allocated and dropped (which would lift the max-RSS high-water mark) before measuring
    weight: torch.nn.Parameter | None = None
    losses: dict[str, Callable[[], torch.Tensor]] = {}
    for variant in variants:
        if variant == "masked_full":
            if weight is None:
                weight = torch.nn.Parameter(torch.empty(CLASSES, DIM).normal_(std=0.01))
            losses[variant] = partial(
                masked_full_softmax_loss, weight, x, labels, dataset_index, class_dataset
            )
            continue
        crossing = 1e-4 if variant == "head_crossing_1e-4" else 0.0
        head = DatasetAwareMarginHead(DIM, [per] * DATASETS, "arcface", S, 1.0, M2, 0.0, crossing_p=crossing)
        if weight is None:
            weight = head.weight
        head.weight = weight
        losses[variant] = partial(head, x, labels, dataset_index)
    assert weight is not None
    return {variant: partial(run_step, loss_fn, weight, x) for variant, loss_fn in losses.items()}


def run_step(loss_fn: Callable[[], torch.Tensor], weight: torch.Tensor, x: torch.Tensor) -> float:
    """Forward+backward from freed gradients (as after optimizer.zero_grad()); returns the loss."""
    weight.grad, x.grad = None, None
    loss = loss_fn()
    loss.backward()
    return loss.item()


def measure_times(rounds: int) -> dict[str, dict[str, float]]:
    """Median seconds per variant and median per-round ratio to the baseline (after one warm-up round)."""
    steps = make_steps(VARIANTS)
    seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    losses: dict[str, float] = {}
    for round_index in range(rounds + 1):
        # rotate the order each round, so no variant always runs right after the baseline's big frees
        for offset in range(len(VARIANTS)):
            variant = VARIANTS[(round_index + offset) % len(VARIANTS)]
            step = steps[variant]
            start = time.perf_counter()
            losses[variant] = step()
            if round_index > 0:
                seconds[variant].append(time.perf_counter() - start)
    base = seconds["masked_full"]
    return {
        v: {
            "seconds": statistics.median(seconds[v]),
            "loss": losses[v],
            "ratio": statistics.median(t / b for t, b in zip(seconds[v], base, strict=True)),
        }
        for v in VARIANTS
    }


def measure_peak_mib(variant: str) -> float:
    """Rise of this process's max RSS (a high-water mark) over two steps, from weights and batch allocated."""
    step = make_steps((variant,))[variant]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--peak-mib-of", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_mib_of:
        print(json.dumps(measure_peak_mib(args.peak_mib_of)))
        return
    peaks = {
        v: json.loads(
            subprocess.run(
                [sys.executable, __file__, "--peak-mib-of", v], check=True, capture_output=True, text=True
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        for v in VARIANTS
    }
    results = measure_times(args.rounds)
    load = os.getloadavg()
    print(
        f"C={CLASSES:,} D={DIM} N={BATCH} K={DATASETS} arcface, CPU threads={torch.get_num_threads()}, "
        f"{args.rounds} interleaved rounds of forward+backward, load average {load[0]:.1f}/{load[1]:.1f}"
    )
    print(f"{'variant':<22}{'fwd+bwd s':>11}{'ratio':>8}{'peak MiB':>11}{'mem ratio':>11}{'loss':>10}")
    for variant in VARIANTS:
        r = results[variant]
        print(
            f"{variant:<22}{r['seconds']:>11.3f}{r['ratio']:>8.2f}{peaks[variant]:>11.0f}"
            f"{peaks[variant] / peaks['masked_full']:>11.2f}{r['loss']:>10.4f}"
        )
    print("ratio = median over rounds of variant time / baseline time in that round; target head <= 0.35")
    print("the crossing row is compared with the p=0 baseline (a masked baseline with crossing costs more)")


if __name__ == "__main__":
    main()
