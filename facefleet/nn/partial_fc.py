"""The dataset-aware margin head split by classes across shards (Partial FC), and its negative sampling.

Shard `rank` of `world_size` holds the contiguous class rows `shard_range(C, world_size, rank)` (every
class on exactly one shard; a dataset's classes may span shards). It sees the whole all-gathered batch and
computes, per sample, its part of the dataset-aware denominator (design.md §5.2): its own dataset's
classes on this shard plus the crossing-dropout entries on this shard; `facefleet.nn.sharded_ce` combines
the parts through a `ShardReducer` (supplied by the caller: all-reduce across workers, or nothing).

Everything random is a function of (seed, step) and the global class index, never of the shard layout, so
every rank draws the same for a step and a run gives the same losses with any number of shards:
- crossing draws: `plan_groups` over the gathered batch with a generator seeded by `step_seed(seed, step)`;
- negative sampling (sample_rate r < 1): class j enters this step's denominators when it is a positive
  (a label of the gathered batch) or when `class_uniforms(j, seed, step) < r`. Within every dataset block
  the kept classes stay that block's columns (so a sample's denominator is its dataset's kept classes, plus
  its crossing entries, which are kept as drawn); expected count per block: positives + r·(negatives).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facefleet.nn.blockwise_ce import Group, HeadKind, MarginSpec
from facefleet.nn.heads import MarginHeadOptions, plan_groups, resolve_head_args
from facefleet.nn.sharded_ce import LocalReducer, ShardGroup, ShardReducer, shard_cross_entropy

_MASK32 = 0xFFFFFFFF


def shard_range(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """[start, end) of shard `rank`: contiguous, sizes differ by at most one, the first shards larger."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside [0, {world_size})")
    if world_size > num_classes:
        raise ValueError(f"{world_size} shards for {num_classes} classes: every shard needs a class")
    base, extra = divmod(num_classes, world_size)
    start = base * rank + min(rank, extra)
    return start, start + base + int(rank < extra)


def step_seed(seed: int, step: int) -> int:
    """A 63-bit seed for the draws of one step (the same on every rank)."""
    return (seed * 1_000_003 + step * 7_919 + 0x5EED) & ((1 << 63) - 1)


def _mul32(h: torch.Tensor, constant: int) -> torch.Tensor:
    """(h · constant) mod 2³² for h in [0, 2³²), without int64 overflow (16-bit halves of the constant)."""
    low, high = constant & 0xFFFF, constant >> 16
    return (h * low + (((h * high) & 0xFFFF) << 16)) & _MASK32


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser on int64 tensors holding values in [0, 2³²)."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def class_uniforms(class_ids: torch.Tensor, seed: int, step: int) -> torch.Tensor:
    """A uniform number in [0, 1) per global class index for (seed, step): a counter-based hash, so any
    shard computes its own classes' numbers without drawing anybody else's."""
    key = step_seed(seed, step)
    h = _fmix32((class_ids & _MASK32) ^ (key & _MASK32))
    h = _fmix32(h ^ ((key >> 32) & _MASK32) ^ ((class_ids >> 32) & _MASK32))
    return h.to(torch.float64) * (1.0 / 2**32)


def sampled_classes(
    start: int, end: int, rate: float, positives: torch.Tensor, seed: int, step: int
) -> torch.Tensor:
    """Sorted global indices in [start, end) kept at this step: every positive, and each other class
    with probability `rate`. `positives` are global class indices (any order, duplicates allowed)."""
    ids = torch.arange(start, end, device=positives.device)
    keep = class_uniforms(ids, seed, step) < rate
    mine = positives[(positives >= start) & (positives < end)]
    keep[mine - start] = True
    return ids[keep]


class ShardedHeadOptions(MarginHeadOptions, total=False):
    """The keywords of `ShardedMarginHead` besides its shard and bias (what a wrapper passes through)."""

    sample_rate: float
    seed: int


class ShardedMarginHead(nn.Module):
    """One shard of a `DatasetAwareMarginHead`: `weight` holds the global class rows [start, end).

    Same hyperparameters as `DatasetAwareMarginHead` plus `sample_rate` and `seed`; `forward` takes the
    batch of every shard (all-gathered), the step (it seeds the draws) and a `ShardReducer`, and returns
    the mean loss over the whole batch, the same number on every shard. `shard=None` holds every class.
    A state dict with the full class matrix loads into any shard (its rows are sliced).
    """

    def __init__(
        self,
        embedding_dim: int,
        classes_per_dataset: list[int],
        shard: tuple[int, int] | None = None,
        kind: HeadKind = "arcface",
        s: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.5,
        m3: float = 0.0,
        crossing_p: float = 0.0,
        sample_rate: float = 1.0,
        seed: int = 0,
        bias: bool | None = None,
    ) -> None:
        super().__init__()
        use_bias = resolve_head_args(kind, classes_per_dataset, crossing_p, bias)
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate}")
        self.num_classes = sum(classes_per_dataset)
        self.start, self.end = shard if shard is not None else (0, self.num_classes)
        if not 0 <= self.start < self.end <= self.num_classes:
            raise ValueError(f"shard {shard} must be a non-empty range inside [0, {self.num_classes})")
        self.embedding_dim = embedding_dim
        self.classes_per_dataset = list(classes_per_dataset)
        self.spec = MarginSpec(kind, s, m1, m2, m3)
        self.kind = kind
        self.crossing_p, self.sample_rate, self.seed = crossing_p, sample_rate, seed
        self.weight = nn.Parameter(torch.empty(self.end - self.start, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)
        self.bias = nn.Parameter(torch.zeros(self.end - self.start)) if use_bias else None

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        dataset_index: torch.Tensor,
        step: int,
        reducer: ShardReducer | None = None,
    ) -> torch.Tensor:
        """Mean cross-entropy over all rows; embeddings [B, D], labels [B] global, dataset_index [B]."""
        generator = torch.Generator().manual_seed(step_seed(self.seed, step))
        groups = plan_groups(
            labels, dataset_index, self.classes_per_dataset, self.crossing_p, generator, self.weight.device
        )
        weight, bias, shard_groups = self._columns(groups, labels, step)
        # the logits and their exp stay in the parameters' precision even inside a mixed-precision region
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            x = embeddings.to(weight.dtype)
            x = x if self.kind == "softmax" else F.normalize(x, dim=1)
            total = shard_cross_entropy(x, weight, bias, self.spec, shard_groups, reducer or LocalReducer())
        return total / embeddings.shape[0]

    def _columns(
        self, groups: list[Group], labels: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, torch.Tensor | None, list[ShardGroup]]:
        """This step's weight (the shard's rows, or its kept rows then its crossing-only rows when
        sample_rate < 1), bias, and the groups restricted to this shard in that weight's columns."""
        if self.sample_rate >= 1.0:
            return self.weight, self.bias, [self._restrict(g, None, None) for g in groups]
        kept = sampled_classes(self.start, self.end, self.sample_rate, labels, self.seed, step)
        crossing = [g.extra_cols for g in groups if g.extra_cols is not None]
        extra = torch.cat(crossing) if crossing else kept.new_zeros(0)
        extra = extra[(extra >= self.start) & (extra < self.end)].unique()
        lookup = torch.full((self.end - self.start,), -1, dtype=torch.long, device=kept.device)
        lookup[kept - self.start] = torch.arange(kept.numel(), device=kept.device)
        extra = extra[lookup[extra - self.start] < 0]
        first = kept.numel()
        lookup[extra - self.start] = torch.arange(first, first + extra.numel(), device=kept.device)
        index = torch.cat([kept, extra]) - self.start
        weight = self.weight.index_select(0, index)
        bias = self.bias.index_select(0, index) if self.bias is not None else None
        return weight, bias, [self._restrict(g, kept, lookup) for g in groups]

    def _restrict(self, group: Group, kept: torch.Tensor | None, lookup: torch.Tensor | None) -> ShardGroup:
        """`group` (global columns) as seen by this shard; `kept`/`lookup` map global classes to the
        sampled weight's columns (None: no sampling, column = class − start)."""
        start, end = self.start, self.end
        lo_global, hi_global = max(group.lo, start), min(group.hi, end)
        if hi_global <= lo_global:
            lo = hi = 0
        elif kept is None:
            lo, hi = lo_global - start, hi_global - start
        else:
            bounds = torch.tensor([lo_global, hi_global], device=kept.device)
            lo, hi = (int(v) for v in torch.searchsorted(kept, bounds))
        target_global = group.target + group.lo
        here = (target_global >= start) & (target_global < end)
        column = target_global - start
        if lookup is not None:
            column = lookup[column.clamp(0, end - start - 1)]
        target = torch.where(here, column - lo, torch.full_like(column, -1))
        restricted = ShardGroup(group.members, lo, hi, target)
        if group.extra_cols is not None and group.extra_rows is not None:
            on_shard = (group.extra_cols >= start) & (group.extra_cols < end)
            cols = group.extra_cols[on_shard] - start
            restricted.extra_rows = group.extra_rows[on_shard]
            restricted.extra_cols = cols if lookup is None else lookup[cols]
        return restricted

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kwargs: object) -> None:
        """Accept the full class matrix (shard-independent checkpoints): keep this shard's rows."""
        for name in ("weight", "bias"):
            value = state_dict.get(prefix + name)
            if value is not None and value.shape[0] == self.num_classes != self.end - self.start:
                state_dict[prefix + name] = value[self.start : self.end]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        return (
            f"embedding_dim={self.embedding_dim}, classes_per_dataset={self.classes_per_dataset}, "
            f"shard=[{self.start}, {self.end}), kind={self.kind}, s={self.spec.s}, m1={self.spec.m1}, "
            f"m2={self.spec.m2}, m3={self.spec.m3}, crossing_p={self.crossing_p}, "
            f"sample_rate={self.sample_rate}, bias={self.bias is not None}"
        )
