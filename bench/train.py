"""Benchmark: a 2-worker Ray Train run vs a plain 2-process torch DDP loop (gloo) on the same model and the
sharded data pipeline. Prints steady-state images/s (after warm-up), time to the first step, and the
fraction of step time spent waiting for data, with ratios. Run: `.venv/bin/python bench/train.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facefleet.platform.runs.schemas import TrainingConfig  # noqa: E402
from facefleet.workers.train_model import build_optimizer, build_training_model  # noqa: E402

BENCH_CONFIG: dict[str, Any] = {
    "backbone": "tiny",
    "embedding_dim": 64,
    "input_size": 48,
    "batch_size": 32,
    "steps": 1000,
    "data_workers": 1,
    "head": {"s": 32.0, "m2": 0.3},
    "scaling": {"num_workers": 2},
    "biometric": {"enabled": False},
}


def timed_training(rank: int, world_size: int, spec: dict[str, Any]) -> dict[str, float]:
    """The shared per-worker loop: the same model, optimiser and loader in both harnesses."""
    from facefleet.workers.data import make_train_loader

    config = TrainingConfig.model_validate(spec["config"])
    torch.manual_seed(rank)
    model = build_training_model(config, spec["classes"], total_steps=spec["steps"])
    optimizer, scheduler = build_optimizer(config, model, spec["steps"])
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world_size > 1 else model
    loader = make_train_loader(
        spec["entries"],
        store_url=spec["store_url"],
        s3_endpoint_url=None,
        batch_size=config.batch_size,
        input_size=config.input_size,
        rank=rank,
        world_size=world_size,
        num_workers=config.data_workers,
        seed=0,
        cache_dir=Path(spec["cache_dir"]) / f"rank{rank}",
        cache_bytes=64 << 20,
    )
    batches = iter(loader)
    first_step_at, steady_started, waiting = 0.0, 0.0, 0.0
    for step in range(spec["steps"]):
        if step == spec["warmup"]:
            steady_started, waiting = time.perf_counter(), 0.0
        started = time.perf_counter()
        images, labels, dataset_index = next(batches)
        waiting += time.perf_counter() - started
        losses = ddp(images, labels, dataset_index, step)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        scheduler.step()
        if step == 0:
            first_step_at = time.time()
    elapsed = time.perf_counter() - steady_started
    measured = spec["steps"] - spec["warmup"]
    return {
        "first_step_at": first_step_at,
        "images_per_second": measured * config.batch_size * world_size / elapsed,
        "data_wait_fraction": waiting / elapsed,
    }


def ray_train_func(spec: dict[str, Any]) -> None:
    import ray.train

    context = ray.train.get_context()
    outcome = timed_training(context.get_world_rank(), context.get_world_size(), spec)
    if context.get_world_rank() == 0:  # Result.metrics only carries checkpointed reports: use a file
        Path(spec["cache_dir"], "ray_result.json").write_text(json.dumps(outcome))
    ray.train.report(outcome)


def run_ray(spec: dict[str, Any]) -> dict[str, float]:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    launched = time.time()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 << 20)
    trainer = TorchTrainer(
        ray_train_func,
        train_loop_config=spec,
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(name="bench", storage_path=spec["cache_dir"] + "/ray"),
    )
    trainer.fit()
    ray.shutdown()
    metrics = json.loads(Path(spec["cache_dir"], "ray_result.json").read_text())
    metrics["startup_seconds"] = metrics["first_step_at"] - launched
    return metrics


def _ddp_worker(rank: int, world_size: int, spec: dict[str, Any], port: int, results: Any) -> None:
    torch.set_num_threads(1)  # what Ray gives each 1-CPU worker (OMP_NUM_THREADS=1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    outcome = timed_training(rank, world_size, spec)
    if rank == 0:
        results.put(outcome)
    dist.barrier()
    dist.destroy_process_group()


def run_plain_ddp(spec: dict[str, Any]) -> dict[str, float]:
    from bench._support import free_port

    launched = time.time()
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.start_processes(_ddp_worker, args=(2, spec, free_port(), results), nprocs=2, start_method="spawn")
    metrics = results.get()
    metrics["startup_seconds"] = metrics["first_step_at"] - launched
    return metrics


def prepare_data(root: Path) -> dict[str, Any]:
    """Three synthetic datasets registered in a throwaway SQLite database and local store."""
    from facefleet.platform.datasets.service import register_dataset_version
    from facefleet.platform.db import migrate
    from facefleet.platform.db.session import session_scope
    from facefleet.platform.settings import get_settings
    from facefleet.platform.store import get_store
    from facefleet.workers.data import label_space_for_versions
    from facefleet.workers.synthetic import generate_synthetic_datasets

    os.environ["FACEFLEET_DATA_DIR"] = str(root)
    get_settings.cache_clear()
    migrate.upgrade(get_settings().effective_database_url)
    synth = generate_synthetic_datasets(
        root / "synth",
        num_datasets=3,
        identities_per_dataset=40,
        images_per_identity=10,
        verification_identities=4,
        verification_pairs=10,
    )
    with session_scope() as session:
        ids = [
            register_dataset_version(session, get_store(), name=d.name, source=d).id
            for d in synth.dataset_dirs
        ]
        entries = label_space_for_versions(session, ids)
    return {
        "entries": [e.model_dump() for e in entries],
        "classes": [e.num_classes for e in entries],
        "store_url": get_settings().effective_store_url,
        "cache_dir": str(root / "cache"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--warmup", type=int, default=30)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory(prefix="facefleet-bench-") as tmp:
        spec = {**prepare_data(Path(tmp)), "config": BENCH_CONFIG, "steps": args.steps, "warmup": args.warmup}
        plain = run_plain_ddp(spec)
        ray_run = run_ray(spec)
    print(
        f"\n2 workers x batch {BENCH_CONFIG['batch_size']}, tiny backbone at {BENCH_CONFIG['input_size']}px, "
        f"{args.steps} steps ({args.warmup} warm-up), {os.cpu_count()} CPU cores"
    )
    print(f"{'':34}{'Ray Train':>12}{'plain DDP':>12}{'ratio':>9}")
    rows = [
        ("steady-state images/s", "images_per_second", "{:12.1f}", "target >= 0.9"),
        ("time to first step (s)", "startup_seconds", "{:12.1f}", ""),
        ("data-wait fraction of step time", "data_wait_fraction", "{:12.3f}", "target <= 0.05"),
    ]
    for label, key, fmt, note in rows:
        ratio = ray_run[key] / plain[key] if plain[key] else float("nan")
        print(f"{label:34}{fmt.format(ray_run[key])}{fmt.format(plain[key])}{ratio:9.2f}  {note}")


if __name__ == "__main__":
    main()
