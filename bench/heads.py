"""Benchmark: the dataset-aware head (block-wise logits) vs a masked full-softmax of the same loss, on CPU.

C = 200,000 classes, D = 512, N = 256, K = 4 equal datasets. Each variant runs in its own subprocess so
its peak resident memory (ru_maxrss) is its own; times are the median forward+backward of a few steps.
Run: .venv/bin/python bench/heads.py
"""

from __future__ import annotations

import json
import math
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from facefleet.nn.heads import DatasetAwareMarginHead, margin_target_cos

CLASSES, DIM, BATCH, DATASETS = 200_000, 512, 256, 4
REPEATS = 3
S, M2 = 64.0, 0.5


def masked_full_softmax_loss(
    head: DatasetAwareMarginHead,
    x: torch.Tensor,
    labels: torch.Tensor,
    dataset_index: torch.Tensor,
    class_dataset: torch.Tensor,
) -> torch.Tensor:
    """The same dataset-aware ArcFace loss computed the direct way: an N×C logit matrix with a mask."""
    cos = F.normalize(x, dim=1) @ F.normalize(head.weight, dim=1).t()
    target = margin_target_cos(cos.gather(1, labels[:, None]), "arcface", 1.0, M2, 0.0)
    logits = (S * cos).scatter(1, labels[:, None], S * target)
    mask = class_dataset[None, :] == dataset_index[:, None]
    return F.cross_entropy(logits.masked_fill(~mask, -math.inf), labels)


def run_variant(variant: str) -> dict[str, float]:
    torch.manual_seed(0)
    per = CLASSES // DATASETS
    crossing = 1e-4 if variant == "head_crossing_1e-4" else 0.0
    head = DatasetAwareMarginHead(DIM, [per] * DATASETS, "arcface", S, 1.0, M2, 0.0, crossing_p=crossing)
    dataset_index = torch.arange(BATCH) % DATASETS
    labels = dataset_index * per + torch.randint(0, per, (BATCH,))
    class_dataset = torch.arange(CLASSES) // per
    x = torch.randn(BATCH, DIM, requires_grad=True)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(REPEATS + 1):
        head.weight.grad, x.grad = None, None
        start = time.perf_counter()
        if variant == "masked_full":
            loss = masked_full_softmax_loss(head, x, labels, dataset_index, class_dataset)
        else:
            loss = head(x, labels, dataset_index)
        loss.backward()
        times.append(time.perf_counter() - start)
    peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    return {"seconds": statistics.median(times[1:]), "peak_mib": peak_mib, "loss": float(loss)}


def main() -> None:
    variants = ["masked_full", "head", "head_crossing_1e-4"]
    results = {}
    for variant in variants:
        out = subprocess.run(
            [sys.executable, __file__, "--variant", variant], check=True, capture_output=True, text=True
        ).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    base = results["masked_full"]
    print(
        f"C={CLASSES:,} D={DIM} N={BATCH} K={DATASETS} arcface, CPU threads={torch.get_num_threads()}, "
        f"median of {REPEATS} forward+backward"
    )
    print(f"{'variant':<22}{'fwd+bwd s':>11}{'ratio':>8}{'peak MiB':>11}{'mem ratio':>11}{'loss':>10}")
    for variant in variants:
        r = results[variant]
        print(
            f"{variant:<22}{r['seconds']:>11.3f}{r['seconds'] / base['seconds']:>8.2f}"
            f"{r['peak_mib']:>11.0f}{r['peak_mib'] / base['peak_mib']:>11.2f}{r['loss']:>10.4f}"
        )
    print("target: head ratio <= 0.35; peak MiB = rise of the process's max RSS during the timed steps")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--variant":
        print(json.dumps(run_variant(sys.argv[2])))
    else:
        main()
