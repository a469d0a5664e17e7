"""The distributed side of the sharded identity head (Partial FC): gathers, all-reduces, checkpoints.

Each Ray Train worker holds one `DistributedMarginHead`, a `facefleet.nn.partial_fc.ShardedMarginHead`
for its contiguous slice of the classes, on a process group of its own (gloo on CPU, NCCL on GPU: the
backend of the default group). Per step:
1. the embeddings, labels and dataset indices of every worker are all-gathered (`gather_with_grad`: the
   backward sums every shard's gradient of the gathered embeddings and hands each worker its own rows);
2. each shard computes its per-sample max and sum-exp (and the target logit where it holds the target) and
   `ProcessGroupReducer` combines them with two all-reduces; the loss is the mean over the global batch,
   the same on every worker.
The head's parameters are kept out of DDP (they differ per worker); the gathered embeddings' gradient is
multiplied by the world size so that DDP's average of the backbone gradients equals the gradient of the
global-batch loss (other losses are local means, which DDP's average already turns into global means).

Checkpoints hold the full class matrix (and full optimiser state rows) under the unsharded names, so a
run resumes with any worker count or without sharding: `full_head_state` gathers the rows to rank 0 (every
rank calls it), `localize_head_state` slices a loaded payload for this worker.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from typing_extensions import Unpack

from facefleet.nn.partial_fc import ShardedHeadOptions, ShardedMarginHead, shard_range


class ProcessGroupReducer:
    """`ShardReducer` over a torch.distributed process group."""

    def __init__(self, group: dist.ProcessGroup | None) -> None:
        self.group = group

    def all_reduce_max(self, tensor: torch.Tensor) -> None:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self.group)

    def all_reduce_sum(self, tensor: torch.Tensor) -> None:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)


def _sizes(count: int, device: torch.device, group: dist.ProcessGroup | None) -> list[int]:
    world = dist.get_world_size(group)
    local = torch.tensor([count], dtype=torch.long, device=device)
    every = [torch.zeros_like(local) for _ in range(world)]
    dist.all_gather(every, local, group=group)
    return [int(t.item()) for t in every]


def _gather_rows(tensor: torch.Tensor, sizes: list[int], group: dist.ProcessGroup | None) -> torch.Tensor:
    """Concatenation of every rank's `tensor` (first dimensions `sizes`, padded for the collective)."""
    longest = max(sizes)
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather in the forward; in the backward, the sum over ranks of the gathered rows' gradients,
    this rank's rows only, times `grad_scale`."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, sizes: list[int], group: dist.ProcessGroup | None, grad_scale: float
    ) -> torch.Tensor:
        ctx.sizes, ctx.group, ctx.grad_scale = sizes, group, grad_scale
        ctx.rank = dist.get_rank(group)
        return _gather_rows(x, sizes, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        total = grad.contiguous().clone()
        # one all-reduce of the small [B, D] gradient (gloo has no reduce-scatter for uneven rows)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        begin = sum(ctx.sizes[: ctx.rank])
        mine = total[begin : begin + ctx.sizes[ctx.rank]]
        return mine * ctx.grad_scale, None, None, None


def gather_batch(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    dataset_index: torch.Tensor,
    group: dist.ProcessGroup | None,
    grad_scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The global batch (ranks in order) from every worker's local batch; gradients reach each worker's
    own embeddings (scaled by `grad_scale`)."""
    sizes = _sizes(embeddings.shape[0], embeddings.device, group)
    gathered = _AllGatherWithGrad.apply(embeddings, sizes, group, grad_scale)
    pair = torch.stack([labels.long(), dataset_index.long()], dim=1)
    meta = _gather_rows(pair, sizes, group)
    return gathered, meta[:, 0], meta[:, 1]


class DistributedMarginHead(ShardedMarginHead):
    """This worker's shard of the dataset-aware head; `forward` takes the local batch and returns the
    global-batch mean loss. Build it on every rank at the same point (it creates a process group)."""

    def __init__(
        self,
        embedding_dim: int,
        classes_per_dataset: list[int],
        *,
        ddp_average: bool = True,
        **options: Unpack[ShardedHeadOptions],
    ) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("the sharded head needs torch.distributed (a Ray Train worker group)")
        world, rank = dist.get_world_size(), dist.get_rank()
        shard = shard_range(sum(classes_per_dataset), world, rank)
        # the arguments are checked by ShardedMarginHead (resolve_head_args), not again here
        super().__init__(embedding_dim, classes_per_dataset, shard, **options)
        self.group = dist.new_group(list(range(world)))
        self.world_size = world
        self.grad_scale = float(world) if ddp_average else 1.0

    def forward(  # type: ignore[override]
        self, embeddings: torch.Tensor, labels: torch.Tensor, dataset_index: torch.Tensor, step: int
    ) -> torch.Tensor:
        gathered, all_labels, all_datasets = gather_batch(
            embeddings, labels, dataset_index, self.group, self.grad_scale
        )
        return super().forward(gathered, all_labels, all_datasets, step, ProcessGroupReducer(self.group))


def ignore_head_in_ddp(model: nn.Module, head_name: str = "head") -> None:
    """Keep the sharded head's parameters out of DDP's gradient averaging (call before wrapping)."""
    names = [f"{head_name}.{name}" for name, _ in getattr(model, head_name).named_parameters()]
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)


def _optimizer_index(optimizer: torch.optim.Optimizer, parameter: torch.Tensor) -> int:
    """The key of `parameter` in `optimizer.state_dict()["state"]` (parameters numbered in group order)."""
    ordered = [p for group in optimizer.param_groups for p in group["params"]]
    return next(i for i, p in enumerate(ordered) if p is parameter)


def _gather_full(shard: torch.Tensor, head: ShardedMarginHead, group: dist.ProcessGroup | None) -> Any:
    """The full class-row tensor on rank 0 (None elsewhere) from every rank's rows; every rank calls."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    longest = shard_range(head.num_classes, world, 0)
    rows = longest[1] - longest[0]
    padded = shard.new_zeros((rows, *shard.shape[1:]))
    padded[: shard.shape[0]] = shard.detach()
    parts = [torch.empty_like(padded) for _ in range(world)] if rank == 0 else None
    dist.gather(padded, parts, dst=0, group=group)
    if parts is None:
        return None
    pieces = []
    for r, part in enumerate(parts):
        start, end = shard_range(head.num_classes, world, r)
        pieces.append(part[: end - start])
    return torch.cat(pieces)


def full_head_state(
    model_state: dict[str, Any],
    optimizer_state: dict[str, Any],
    head: DistributedMarginHead,
    optimizer: torch.optim.Optimizer,
    prefix: str = "head.",
) -> None:
    """Replace, in place, the head's rows in the model and optimiser state dicts by the full class matrix
    on rank 0 (entries set to None on other ranks). Collective: every rank calls it."""
    for name, parameter in head.named_parameters():
        model_state[prefix + name] = _gather_full(parameter, head, head.group)
        index = _optimizer_index(optimizer, parameter)
        # state_dict() shares the per-parameter dicts with the live optimiser: replace, never mutate
        entry = dict(optimizer_state["state"].get(index, {}))
        if index in optimizer_state["state"]:
            optimizer_state["state"][index] = entry
        for key in sorted(entry):
            value = entry[key]
            if isinstance(value, torch.Tensor) and value.shape == parameter.shape:
                entry[key] = _gather_full(value, head, head.group)


def localize_head_state(
    payload: dict[str, Any], head: ShardedMarginHead, optimizer: torch.optim.Optimizer, prefix: str = "head."
) -> None:
    """Slice, in place, a checkpoint payload's full head rows (model and optimiser) to this shard's."""
    for name, parameter in head.named_parameters():
        full = payload["model"].get(prefix + name)
        if full is not None and full.shape[0] == head.num_classes:
            payload["model"][prefix + name] = full[head.start : head.end]
        entry = payload["optimizer"]["state"].get(_optimizer_index(optimizer, parameter), {})
        for key, value in list(entry.items()):
            if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == head.num_classes:
                entry[key] = value[head.start : head.end]
