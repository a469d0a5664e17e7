"""Training checkpoints: model, optimiser, scheduler, AMP scaler, step and RNG, written by rank 0 only.

With a sharded head every rank takes part in building the payload (the head's rows are gathered to rank
0), so the file always holds the full class matrix: it loads with any worker count, sharded or not.
"""

from __future__ import annotations

import logging
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import torch
from torch import nn

from facefleet.workers.partial_fc import DistributedMarginHead, full_head_state, localize_head_state

logger = logging.getLogger(__name__)
STATE_FILE = "train_state.pt"


@dataclass
class TrainState:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    sharded_head: DistributedMarginHead | None = None


def state_dict(state: TrainState, step: int) -> dict[str, Any]:
    """The checkpoint payload; collective when the head is sharded (every rank calls, rank 0 gets it)."""
    model_state, optimizer_state = state.model.state_dict(), state.optimizer.state_dict()
    if state.sharded_head is not None:
        full_head_state(model_state, optimizer_state, state.sharded_head, state.optimizer)
    return {
        "step": step,
        "model": model_state,
        "optimizer": optimizer_state,
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
    }


def save_checkpoint(state: TrainState, step: int, *, writer: bool = True) -> ray.train.Checkpoint | None:
    """A Ray checkpoint in a fresh temporary folder (Ray uploads it to the run's storage on report), on the
    writer; None elsewhere. With a sharded head every rank must call it."""
    payload = state_dict(state, step)
    if not writer:
        return None
    folder = Path(tempfile.mkdtemp(prefix=f"facefleet-ckpt-{step}-"))
    torch.save(payload, folder / STATE_FILE)
    return ray.train.Checkpoint.from_directory(str(folder))


def load_checkpoint_payload(
    checkpoint: ray.train.Checkpoint, device: torch.device | str = "cpu"
) -> dict[str, Any]:
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / STATE_FILE, map_location=device, weights_only=True)


def restore_state(checkpoint: ray.train.Checkpoint | None, state: TrainState, device: torch.device) -> int:
    """Load the latest checkpoint into ``state``; the step to continue from (0 without a checkpoint)."""
    if checkpoint is None:
        return 0
    payload = load_checkpoint_payload(checkpoint, device)
    if state.sharded_head is not None:
        localize_head_state(payload, state.sharded_head, state.optimizer)
    state.model.load_state_dict(payload["model"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.scheduler.load_state_dict(payload["scheduler"])
    state.scaler.load_state_dict(payload["scaler"])
    torch.set_rng_state(payload["torch_rng"].cpu())
    random.setstate(_as_random_state(payload["python_rng"]))
    logger.info("resumed from the checkpoint at step %d", payload["step"])
    return int(payload["step"])


def _as_random_state(value: Any) -> tuple[Any, ...]:
    """random.setstate wants tuples; a round trip through torch.save may hand back lists."""
    version, internal, gauss = value
    return (version, tuple(internal), gauss)
