"""Process bodies of the sharded-head tests: 2 gloo ranks started with torch.multiprocessing.spawn.

Each rank checks its own numbers against a reference it computes itself (the unsharded dataset-aware
head on the global batch), so an assertion error in a rank fails the test with that rank's traceback.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from facefleet.nn.backbones import get_backbone
from facefleet.nn.heads import DatasetAwareMarginHead
from facefleet.nn.partial_fc import ShardedMarginHead, step_seed
from facefleet.platform.runs.schemas import TrainingConfig
from facefleet.workers.partial_fc import DistributedMarginHead, ignore_head_in_ddp

CLASSES = [5, 9, 4]  # 18 classes: shards [0, 9) and [9, 18), so dataset 1 spans both
OFFSETS = [0, 5, 14]
DIM, SIZE, LOCAL_BATCH = 8, 16, 6
TOLERANCE = 1e-5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def init_group(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    os.environ["GLOO_SOCKET_IFNAME"] = os.environ.get("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)


def local_batch(rank: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank `rank`'s images (float64), global labels and dataset indices; every dataset appears."""
    gen = torch.Generator().manual_seed(seed * 100 + rank)
    datasets = torch.tensor([0, 1, 2, 1, 1, 0])[torch.randperm(LOCAL_BATCH, generator=gen)]
    counts = torch.tensor(CLASSES)[datasets]
    labels = torch.tensor(OFFSETS)[datasets] + (torch.rand(LOCAL_BATCH, generator=gen) * counts).long()
    images = torch.randn(LOCAL_BATCH, 3, SIZE, SIZE, generator=gen, dtype=torch.float64)
    return images, labels, datasets


class ShardedNet(nn.Module):
    """Backbone + sharded head, the way FaceTrainingModel combines them (one module under DDP)."""

    def __init__(self, backbone: nn.Module, head: DistributedMarginHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, datasets: torch.Tensor, step: int
    ) -> torch.Tensor:
        loss: torch.Tensor = self.head(self.backbone(images), labels, datasets, step)
        return loss


HEAD_CASES: list[dict[str, Any]] = [
    {"kind": "arcface", "s": 8.0, "m2": 0.5, "crossing_p": 0.3},
    {"kind": "combined", "s": 8.0, "m1": 1.3, "m2": 0.2, "m3": 0.1, "crossing_p": 0.25},
    {"kind": "softmax", "crossing_p": 0.3},
    {"kind": "cosface", "s": 8.0, "m3": 0.2, "crossing_p": 1.0},
    {"kind": "arcface", "s": 8.0, "m2": 0.5, "crossing_p": 0.0},
]


def equality_worker(rank: int, world: int, port: int) -> None:
    """Sharded loss and every gradient (backbone after DDP, head shard) == the unsharded head's, float64."""
    init_group(rank, world, port)
    try:
        for case_index, case in enumerate(HEAD_CASES):
            _check_case(rank, world, case_index, case)
    finally:
        dist.destroy_process_group()


def _check_case(rank: int, world: int, case_index: int, case: dict[str, Any]) -> None:
    step, seed = 11 + case_index, 5
    torch.manual_seed(100 + case_index)
    backbone = get_backbone("tiny", embedding_dim=DIM, input_size=SIZE).double()
    reference = DatasetAwareMarginHead(DIM, CLASSES, **case).double()
    head = DistributedMarginHead(DIM, CLASSES, seed=seed, **case).double()
    head.load_state_dict(reference.state_dict())  # the full matrix: each rank keeps its rows
    reference_backbone = get_backbone("tiny", embedding_dim=DIM, input_size=SIZE).double()
    reference_backbone.load_state_dict(backbone.state_dict())

    # reference: every rank's local batch through the backbone (BatchNorm sees local batches, as in DDP),
    # then the unsharded head over the concatenated global batch, its crossing draws seeded like the shards'
    batches = [local_batch(r, seed=case_index) for r in range(world)]
    embeddings = torch.cat([reference_backbone(images) for images, _, _ in batches])
    labels = torch.cat([b[1] for b in batches])
    datasets = torch.cat([b[2] for b in batches])
    reference.generator = torch.Generator().manual_seed(step_seed(seed, step))
    expected_loss = reference(embeddings, labels, datasets)
    expected_loss.backward()

    net = ShardedNet(backbone, head)
    ignore_head_in_ddp(net)
    ddp = nn.parallel.DistributedDataParallel(net)
    images, my_labels, my_datasets = batches[rank]
    loss = ddp(images, my_labels, my_datasets, step)
    loss.backward()

    where = f"case {case} rank {rank}"
    assert abs(float(loss.detach()) - float(expected_loss.detach())) < TOLERANCE, where
    pairs = zip(backbone.named_parameters(), reference_backbone.parameters(), strict=True)
    for (name, got), expected in pairs:
        assert got.grad is not None and expected.grad is not None
        error = float((got.grad - expected.grad).abs().max())
        assert error < TOLERANCE, f"{where}: backbone {name} gradient off by {error}"
    rows = slice(head.start, head.end)
    for name in ("weight", "bias"):
        mine, full = getattr(head, name), getattr(reference, name)
        if full is None:
            continue
        assert mine.grad is not None and full.grad is not None
        error = float((mine.grad - full.grad[rows]).abs().max())
        assert error < TOLERANCE, f"{where}: head {name} gradient off by {error}"


def sampling_worker(rank: int, world: int, port: int) -> None:
    """With r < 1 the sharded loss and gradients equal one shard holding every class (same draws)."""
    init_group(rank, world, port)
    try:
        step, seed = 3, 9
        case = {"kind": "arcface", "s": 8.0, "m2": 0.5, "crossing_p": 0.3, "sample_rate": 0.4}
        torch.manual_seed(1)
        whole = ShardedMarginHead(DIM, CLASSES, None, seed=seed, **case).double()  # type: ignore[arg-type]
        head = DistributedMarginHead(DIM, CLASSES, seed=seed, ddp_average=False, **case).double()
        head.load_state_dict(whole.state_dict())
        gen = torch.Generator().manual_seed(0)
        embeddings = torch.randn(world * LOCAL_BATCH, DIM, generator=gen, dtype=torch.float64)
        batches = [local_batch(r, seed=7) for r in range(world)]
        labels = torch.cat([b[1] for b in batches])
        datasets = torch.cat([b[2] for b in batches])
        full_x = embeddings.clone().requires_grad_(True)
        expected = whole(full_x, labels, datasets, step)
        expected.backward()
        mine = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        x = embeddings[mine].clone().requires_grad_(True)
        loss = head(x, labels[mine], datasets[mine], step)
        loss.backward()
        assert abs(float(loss.detach()) - float(expected.detach())) < TOLERANCE
        assert x.grad is not None and full_x.grad is not None and whole.weight.grad is not None
        assert float((x.grad - full_x.grad[mine]).abs().max()) < TOLERANCE
        assert head.weight.grad is not None
        assert float((head.weight.grad - whole.weight.grad[head.start : head.end]).abs().max()) < TOLERANCE
    finally:
        dist.destroy_process_group()


def reshard_config(workers: int) -> TrainingConfig:
    return TrainingConfig.model_validate(
        {
            "backbone": "tiny",
            "embedding_dim": DIM,
            "input_size": SIZE,
            "steps": 4,
            "reversal": {"enabled": False},
            "head": {"s": 8.0, "m2": 0.3, "crossing_p": 0.2, "sharded": workers > 1},
            "scaling": {"num_workers": workers},
        }
    )


def build_state(workers: int, sharded: bool) -> Any:
    from facefleet.workers.train_model import build_optimizer, build_training_model
    from facefleet.workers.train_state import TrainState

    config = reshard_config(workers)
    model = build_training_model(config, CLASSES, 4, sharded_head=sharded)
    optimizer, scheduler = build_optimizer(config, model, 4)
    state = TrainState(model, optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=False))
    if sharded:
        state.sharded_head = model.head  # type: ignore[assignment]
    return state


def train_and_save_worker(rank: int, world: int, port: int, folder: str) -> None:
    """Two sharded training steps under DDP, then a checkpoint (rank 0 writes the full matrix) and each
    rank's own head rows and momentum for the later comparison."""
    from facefleet.workers.train_loop import wrap_distributed
    from facefleet.workers.train_state import STATE_FILE, save_checkpoint

    init_group(rank, world, port)
    try:
        torch.manual_seed(rank)
        state = build_state(world, sharded=True)
        ddp = wrap_distributed(state.model, torch.device("cpu"))
        for step in range(2):
            images, labels, datasets = local_batch(rank, seed=step)
            losses = ddp(images.float(), labels, datasets, step)
            state.optimizer.zero_grad()
            losses["loss"].backward()
            state.optimizer.step()
            state.scheduler.step()
        checkpoint = save_checkpoint(state, 2, writer=rank == 0)
        if rank == 0:
            assert checkpoint is not None
            with checkpoint.as_directory() as path:
                (Path(folder) / "two").mkdir()
                (Path(path) / STATE_FILE).rename(Path(folder) / "two" / STATE_FILE)
        head = state.model.head
        momentum = state.optimizer.state[head.weight]["momentum_buffer"]
        torch.save({"weight": head.weight.detach(), "momentum": momentum}, Path(folder) / f"shard{rank}.pt")
    finally:
        dist.destroy_process_group()


def load_and_compare_worker(rank: int, world: int, port: int, folder: str) -> None:
    """Resume sharded from the one-worker checkpoint: this rank's rows and momentum are bit-identical."""
    import ray.train

    from facefleet.workers.train_state import restore_state

    init_group(rank, world, port)
    try:
        state = build_state(world, sharded=True)
        step = restore_state(ray.train.Checkpoint.from_directory(str(Path(folder) / "one")), state, "cpu")
        assert step == 2
        before = torch.load(Path(folder) / f"shard{rank}.pt", weights_only=True)
        head = state.model.head
        assert torch.equal(head.weight.detach(), before["weight"])
        assert torch.equal(state.optimizer.state[head.weight]["momentum_buffer"], before["momentum"])
    finally:
        dist.destroy_process_group()
