"""The Ray Train `train_func`: DDP backbone + dataset-aware head + dataset classifier (+ ModelNet).

Thin over `facefleet.nn`; model assembly lives in `facefleet.workers.train_model`, checkpoints in
`facefleet.workers.train_state`. Every rank calls `ray.train.report` at the same steps (it is a barrier);
only rank 0 writes the checkpoint and the database rows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import ray.train
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from facefleet.nn.augment import AugmentSettings, augment_batch, step_generator
from facefleet.platform.runs.schemas import TrainingConfig
from facefleet.workers.partial_fc import DistributedMarginHead, ignore_head_in_ddp
from facefleet.workers.train_job import TrainJob as TrainJob
from facefleet.workers.train_model import FaceTrainingModel, build_optimizer, build_training_model
from facefleet.workers.train_reporting import RankZeroReporter
from facefleet.workers.train_state import TrainState, restore_state, save_checkpoint

logger = logging.getLogger(__name__)


class RunJob(Protocol):
    """What the shared loop and driver steps read of a job (a TrainJob, a DistillJob or a LandmarkJob)."""

    @property
    def run_id(self) -> int: ...
    @property
    def config(self) -> TrainingConfig: ...
    @property
    def total_steps(self) -> int: ...
    def model_dump(self) -> dict[str, Any]: ...


def pick_device(config: TrainingConfig) -> torch.device:
    if config.scaling.gpus_per_worker > 0 and torch.cuda.is_available():
        from ray.train.torch import get_device

        return get_device()
    return torch.device("cpu")


def epoch_loaders(
    job: TrainJob,
    rank: int,
    world_size: int,
    start_step: int,
    *,
    input_size: int,
    balanced: tuple[int, int] | None = None,
) -> Iterator[DataLoader]:
    """A fresh training loader per pass, forever, a new shuffle each; a resumed run starts from a fresh
    seed, not a replay (shared by the recognition and the distillation loop)."""
    from facefleet.workers.data import make_train_loader

    cfg = job.config
    epoch = 0
    while True:
        yield make_train_loader(
            job.entries,
            store_url=job.store_url,
            s3_endpoint_url=job.s3_endpoint_url,
            batch_size=cfg.batch_size,
            input_size=input_size,
            rank=rank,
            world_size=world_size,
            num_workers=cfg.data_workers,
            seed=cfg.seed + 7919 * start_step + epoch,
            cache_dir=Path(job.cache_dir),
            cache_bytes=cfg.cache_bytes,
            balanced=balanced,
        )
        epoch += 1


def infinite_batches(
    job: TrainJob, rank: int, world_size: int, start_step: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Batches forever (identity-balanced when the biometric stage draws its pairs from the batch)."""
    cfg = job.config
    per_identity = cfg.biometric.images_per_identity
    pair_batches = cfg.biometric.enabled and cfg.biometric.pair_source == "batch"
    balanced = (cfg.batch_size // per_identity, per_identity) if pair_batches else None
    for loader in epoch_loaders(
        job, rank, world_size, start_step, input_size=cfg.input_size, balanced=balanced
    ):
        for images, labels, dataset_index in loader:
            yield (
                images.to(device, non_blocking=True),
                labels.to(device, non_blocking=True),
                dataset_index.to(device, non_blocking=True),
            )


def any_rank_says(flag: bool, device: torch.device) -> bool:
    """True on every rank when any rank passes True (keeps ranks in lockstep on stop decisions)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def apply_gradients(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> None:
    """One optimizer step on ``loss`` (through the scaler; a disabled one passes everything through)."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()


def end_of_step(
    job: RunJob,
    step: int,
    loss: torch.Tensor,
    reporter: RankZeroReporter | None,
    state: TrainState,
    *,
    rank: int,
    device: torch.device,
    evaluate: FaceTrainingModel | None = None,
) -> bool:
    """What every run kind's loop does after step ``step``: write metrics every metrics_interval steps and
    stop (False) when any rank saw a cancel request; evaluate ``evaluate`` every eval_interval steps; save
    a checkpoint (rank 0 writes it) and report to Ray Train every checkpoint_interval steps."""
    cfg = job.config
    last = step == job.total_steps
    if step % cfg.metrics_interval == 0 or last:
        cancel = reporter.write(step) if reporter is not None else False
        if any_rank_says(cancel, device):
            logger.info("run %s: cancel requested, stopping at step %d", job.run_id, step)
            return False
        if reporter is not None and evaluate is not None and cfg.eval_interval:
            if step % cfg.eval_interval == 0 and not last:
                reporter.evaluate(step, evaluate)
    if step % cfg.checkpoint_interval == 0 or last:
        checkpoint = save_checkpoint(state, step, writer=rank == 0)
        ray.train.report({"step": step, "loss": float(loss.detach())}, checkpoint=checkpoint)
    return True


def wrap_distributed(model: FaceTrainingModel, device: torch.device) -> torch.nn.Module:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        if model.sharded_head:
            ignore_head_in_ddp(model)
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return model


def train_func(loop_config: dict[str, Any]) -> None:
    """One worker's training loop (Ray Train calls it on every rank, or in-process in local mode)."""
    job = TrainJob.model_validate(loop_config)
    cfg = job.config
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = pick_device(cfg)
    torch.manual_seed(cfg.seed + rank)
    sharded = cfg.head.sharded and world_size > 1
    classes = [entry.num_classes for entry in job.entries]
    model = build_training_model(cfg, classes, job.total_steps, sharded_head=sharded).to(device)
    optimizer, scheduler = build_optimizer(cfg, model, job.total_steps)
    use_amp = cfg.mixed_precision and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    state = TrainState(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
    if sharded:
        assert isinstance(model.head, DistributedMarginHead)
        state.sharded_head = model.head
    start_step = restore_state(ray.train.get_checkpoint(), state, device)
    ddp = wrap_distributed(model, device)
    reporter = RankZeroReporter(job, world_size, start_step) if rank == 0 else None
    batches = infinite_batches(job, rank, world_size, start_step, device)
    jitter = AugmentSettings(**cfg.augment.model_dump())
    step = start_step
    while step < job.total_steps:
        wait_started = time.perf_counter()
        images, labels, dataset_index = next(batches)
        data_wait = time.perf_counter() - wait_started
        if jitter.enabled:  # draws fixed by (seed, rank, step): a resumed run jitters as the first did
            images = augment_batch(images, jitter, step_generator(cfg.seed, rank, step))
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            losses = ddp(images, labels, dataset_index, step)
        apply_gradients(losses["loss"], optimizer, scheduler, scaler)
        step += 1
        if reporter is not None:
            reporter.after_step(
                step,
                losses,
                images.shape[0] * world_size,
                data_wait,
                optimizer.param_groups[0]["lr"],
                model.stage(step - 1),
            )
        if not end_of_step(
            job, step, losses["loss"], reporter, state, rank=rank, device=device, evaluate=model
        ):
            return
