"""Benchmark: the sharded dataset-aware head (Partial FC) vs the replicated head, 2 gloo workers on the CPU.

Part 1, memory and step time, in one run: 2 worker processes (torch.multiprocessing + gloo, 1 thread
each), D = 512, 128 images per worker, K = 4 equal datasets, ArcFace, crossing p = 1e-4, SGD with momentum.
- replicated: every worker holds all C classes; forward+backward on its local batch, then the head's
  [C, D] gradient is all-reduced (what DDP does), then the optimiser step;
- sharded: every worker holds C/2 classes; embeddings all-gathered, per-sample max/sum-exp all-reduced
  (`facefleet.workers.partial_fc`), the optimiser steps over its own rows only.
Per-worker head memory = bytes of weights + gradients + momentum actually held after a step. Step time =
median over timed steps of the slower worker. C = 200k is measured for both. At C = 2M the sharded head
(~5.9 GiB per worker) is measured too, in its own 2 processes, when the machine has the memory free
(MemAvailable); the replicated one (~11.4 GiB per worker, ~23 GiB for 2) is measured only if that fits,
otherwise its memory is computed from the same shapes and its step time projected linearly in C from the
200k measurement (marked "projected").
Part 2, accuracy: r = 0.1 vs r = 1 on a synthetic face benchmark (tests/nn/test_learning.py's world with
more people), held-out verification accuracy over seeds. The sampling is a function of (seed, step, class),
so one shard holding every class trains exactly like 2 workers would; it runs in this process.
Run: .venv/bin/python bench/partial_fc.py [--part all|memory|accuracy]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from facefleet.nn.heads import DatasetAwareMarginHead

DIM, LOCAL_BATCH, DATASETS, WORKERS = 512, 128, 4, 2
SMOKE = os.environ.get("FACEFLEET_BENCH_SMOKE") == "1"  # tiny sizes: checks the script runs, no numbers
MEASURED_C, PROJECTED_C = (2_000, 20_000) if SMOKE else (200_000, 2_000_000)
WARMUP, TIMED = (1, 2) if SMOKE else (2, 5)
S, M2, CROSSING = 64.0, 0.5, 1e-4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _batch(rank: int, step: int, classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 * step + rank)
    per = classes // DATASETS
    datasets = torch.arange(LOCAL_BATCH) % DATASETS
    labels = datasets * per + torch.randint(0, per, (LOCAL_BATCH,), generator=gen)
    return torch.randn(LOCAL_BATCH, DIM, generator=gen), labels, datasets


def _head_bytes(head: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    total = 0
    for parameter in head.parameters():
        total += parameter.numel() * parameter.element_size()
        if parameter.grad is not None:
            total += parameter.grad.numel() * parameter.grad.element_size()
        for value in optimizer.state.get(parameter, {}).values():
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
    return total


def _build(rank: int, variant: str, classes: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    from facefleet.workers.partial_fc import DistributedMarginHead

    per = [classes // DATASETS] * DATASETS
    torch.manual_seed(rank)
    head: torch.nn.Module
    if variant == "sharded":
        head = DistributedMarginHead(DIM, per, s=S, m2=M2, crossing_p=CROSSING, ddp_average=False)
    else:
        head = DatasetAwareMarginHead(DIM, per, "arcface", S, 1.0, M2, 0.0, crossing_p=CROSSING)
    return head, torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


def _step(
    variant: str, head: torch.nn.Module, optimizer: torch.optim.Optimizer, rank: int, step: int, classes: int
) -> float:
    """One training step of the head; the slower worker's seconds."""
    embeddings, labels, datasets = _batch(rank, step, classes)
    embeddings.requires_grad_(True)
    dist.barrier()
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=False)
    if variant == "sharded":
        head(embeddings, labels, datasets, step).backward()
    else:
        head(embeddings, labels, datasets).backward()
        grad = head.weight.grad
        assert grad is not None
        dist.all_reduce(grad)  # DDP's average of the replicated head's gradient
        grad.div_(WORKERS)
    optimizer.step()
    elapsed = torch.tensor([time.perf_counter() - start])
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    return float(elapsed)


def _worker(
    rank: int, port: int, out: Any, variants: tuple[str, ...], classes: int, warmup: int, timed: int
) -> None:
    """The variants built side by side and stepped alternately (order rotated each round), so a load
    change on the shared machine hits both alike."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORKERS)
    try:
        built = {v: _build(rank, v, classes) for v in variants}
        seconds: dict[str, list[float]] = {v: [] for v in variants}
        for step in range(warmup + timed):
            for v in variants[step % len(variants) :] + variants[: step % len(variants)]:
                elapsed = _step(v, *built[v], rank, step, classes)
                if step >= warmup:
                    seconds[v].append(elapsed)
        ratios = [1.0] * timed
        if len(variants) == 2:
            ratios = [t / b for t, b in zip(seconds["sharded"], seconds["replicated"], strict=True)]
        if rank == 0:
            out.put(
                {
                    v: {
                        "seconds": statistics.median(seconds[v]),
                        "bytes": float(_head_bytes(*built[v])),
                        "ratio": statistics.median(ratios) if v == "sharded" else 1.0,
                    }
                    for v in variants
                }
            )
    finally:
        dist.destroy_process_group()


def _measure(variants: tuple[str, ...], classes: int, warmup: int, timed: int) -> dict[str, dict[str, float]]:
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.start_processes(
        _worker,
        args=(_free_port(), queue, variants, classes, warmup, timed),
        nprocs=WORKERS,
        join=True,
        start_method="spawn",
    )
    return dict(queue.get())


def _available_bytes() -> int:
    """MemAvailable from /proc/meminfo (0 where unknown: then nothing large is tried)."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _needed_bytes(variant: str, classes: int) -> float:
    """Head weights + grads + momentum per worker, times the workers, plus 30% for the step's buffers."""
    per_worker = 3 * classes * DIM * 4 / (WORKERS if variant == "sharded" else 1)
    return 1.3 * WORKERS * per_worker


def memory_and_time(large: bool = True) -> None:
    measured = {MEASURED_C: _measure(("replicated", "sharded"), MEASURED_C, WARMUP, TIMED)}
    if large:
        # Replicated first if it fits (then both alternate as at 200k), else the sharded head alone.
        fits = [v for v in ("replicated", "sharded") if _needed_bytes(v, PROJECTED_C) < _available_bytes()]
        if fits:
            print(
                f"C={PROJECTED_C:,}: measuring {', '.join(fits)} "
                f"({_available_bytes() / 2**30:.1f} GiB available)",
                flush=True,
            )
            measured[PROJECTED_C] = _measure(tuple(fits), PROJECTED_C, 1, 2)
    load = os.getloadavg()
    print(
        f"D={DIM}, {LOCAL_BATCH} images/worker, {WORKERS} gloo workers x 1 thread, K={DATASETS}, ArcFace, "
        f"crossing p={CROSSING}, SGD+momentum; median of {TIMED} steps after {WARMUP}; "
        f"load average {load[0]:.1f}/{load[1]:.1f}"
    )
    print(
        f"{'C':>10} {'variant':<11}{'head MiB/worker':>17}{'mem ratio':>11}{'step s':>9}"
        f"{'time ratio':>12}  note"
    )
    rows = []
    for classes in (MEASURED_C, PROJECTED_C):
        scale = classes / MEASURED_C
        base = measured[MEASURED_C]
        for variant in ("replicated", "sharded"):
            if variant in measured.get(classes, {}):
                r = measured[classes][variant]
                rows.append((classes, variant, r["bytes"], r["seconds"], r["ratio"], False))
            else:
                r = base[variant]
                rows.append((classes, variant, r["bytes"] * scale, r["seconds"] * scale, r["ratio"], True))
    base_bytes = {c: b for c, v, b, *_ in rows if v == "replicated"}
    base_seconds = {c: t for c, v, _, t, *_ in rows if v == "replicated"}
    base_projected = {c: proj for c, v, *_, proj in rows if v == "replicated"}
    for classes, variant, nbytes, seconds, ratio, projected in rows:
        note = "projected (linear in C from 200k)" if projected else "measured"
        if projected and _needed_bytes(variant, classes) >= _available_bytes():
            note += f"; {WORKERS} x {nbytes / 2**30:.1f} GiB does not fit in the memory available"
        if variant == "sharded" and not projected and base_projected[classes]:
            ratio = seconds / base_seconds[classes]  # measured sharded against the projected replicated
            note += "; time ratio against the projected replicated step"
        print(
            f"{classes:>10,} {variant:<11}{nbytes / 2**20:>17,.0f}{nbytes / base_bytes[classes]:>11.2f}"
            f"{seconds:>9.2f}{ratio:>12.2f}  {note}"
        )
    print(
        "head memory = weights + gradients + SGD momentum held by one worker after a step; time ratio = "
        "median over steps of sharded / replicated step time in the same round"
    )


# ---- part 2: accuracy of r = 0.1 vs r = 1 on a synthetic face benchmark ---------------------------------

SIZE, PEOPLE, HELD_OUT, K_ACC, STEPS, PER_DATASET = 32, 240, 40, 2, 5 if SMOKE else 300, 48


def _world(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(PEOPLE + HELD_OUT, 3, 6, 6, generator=gen)
    prototypes = F.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return prototypes, torch.randn(K_ACC, 3, 1, 1, generator=gen) * 0.8


def _render(
    world: tuple[torch.Tensor, torch.Tensor], people: torch.Tensor, styles: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    prototypes, style = world
    noise = torch.randn(people.numel(), 3, SIZE, SIZE, generator=gen) * 0.6
    gain = 1.0 + 0.2 * torch.randn(people.numel(), 1, 1, 1, generator=gen)
    return prototypes[people] * gain + style[styles] + noise


def _train_and_verify(world: tuple[torch.Tensor, torch.Tensor], rate: float, seed: int) -> float:
    """Dataset k holds people [k·P/K, (k+1)·P/K) as its classes; held-out people verify."""
    from facefleet.nn.backbones import get_backbone
    from facefleet.nn.partial_fc import ShardedMarginHead
    from facefleet.nn.verification import verification_metrics

    torch.manual_seed(seed)
    per = PEOPLE // K_ACC
    net = get_backbone("tiny", embedding_dim=32, input_size=SIZE)
    head = ShardedMarginHead(32, [per] * K_ACC, None, "cosface", s=16.0, m3=0.2, sample_rate=rate, seed=seed)
    optimizer = torch.optim.SGD(
        [*net.parameters(), *head.parameters()], lr=0.1, momentum=0.9, weight_decay=5e-4
    )
    gen = torch.Generator().manual_seed(seed + 1)
    for step in range(STEPS):
        datasets = torch.arange(K_ACC).repeat_interleave(PER_DATASET)
        labels = datasets * per + torch.randint(0, per, (datasets.numel(),), generator=gen)
        images = _render(world, labels, datasets, gen)
        loss = head(net(images), labels, datasets, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    gen = torch.Generator().manual_seed(99)
    first = torch.randint(PEOPLE, PEOPLE + HELD_OUT, (800,), generator=gen)
    other = torch.randint(PEOPLE, PEOPLE + HELD_OUT - 1, (800,), generator=gen)
    other = other + (other >= first).long()
    is_same = torch.arange(800) % 2 == 0
    second = torch.where(is_same, first, other)
    a = _render(world, first, torch.randint(0, K_ACC, (800,), generator=gen), gen)
    b = _render(world, second, torch.randint(0, K_ACC, (800,), generator=gen), gen)
    net.eval()
    with torch.no_grad():
        scores = F.cosine_similarity(net(a), net(b))
    return float(verification_metrics(scores, is_same).accuracy)


def accuracy(seeds: int) -> None:
    torch.set_num_threads(1)
    world = _world(0)
    results: dict[float, list[float]] = {1.0: [], 0.1: []}
    for seed in range(1, seeds + 1):
        for rate in results:
            results[rate].append(_train_and_verify(world, rate, seed))
    print(
        f"\nsynthetic benchmark (not real faces): {K_ACC} datasets x {PEOPLE // K_ACC} people "
        f"at {SIZE}x{SIZE}, "
        f"tiny backbone, CosFace s=16 m=0.2, {STEPS} steps of {K_ACC * PER_DATASET} images; "
        f"held-out verification accuracy on 800 pairs of {HELD_OUT} unseen people"
    )
    print(f"{'sample_rate':>12}{'mean acc':>10}{'min':>8}{'max':>8}  per seed")
    for rate, values in results.items():
        print(
            f"{rate:>12}{statistics.mean(values):>10.3f}{min(values):>8.3f}{max(values):>8.3f}  "
            + " ".join(f"{v:.3f}" for v in values)
        )
    gap = statistics.mean(results[1.0]) - statistics.mean(results[0.1])
    print(f"r=1 minus r=0.1: {100 * gap:+.1f} points (target: within 1 point)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "memory", "accuracy"), default="all")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--no-large", action="store_true", help="C = 2M projected only, never allocated")
    args = parser.parse_args()
    if args.part in ("all", "memory"):
        memory_and_time(large=not args.no_large)
    if args.part in ("all", "accuracy"):
        accuracy(args.seeds)


if __name__ == "__main__":
    main()
