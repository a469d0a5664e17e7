"""One shard's part of the dataset-aware margin cross-entropy (Partial FC), with a hand-written backward.

A shard holds a slice of the class matrix. For every sample of the (all-gathered) batch it computes the
log-sum-exp over the columns of the sample's denominator that lie on this shard (its own dataset's classes
there, plus its crossing-dropout entries there), and the margin target logit when the target class lies on
this shard. A `ShardReducer` combines those per-sample numbers across shards (max, then sum of exp); the
reducer is the only place that communicates, so this module stays pure tensor math: with `LocalReducer`
(one shard holding every class) the result equals `facefleet.nn.blockwise_ce.blockwise_cross_entropy`.
The backward needs no communication: with the global log-sum-exp known, every shard's softmax entries are
local. The gradient of the embeddings is this shard's contribution; the caller sums it across shards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from facefleet.nn.blockwise_ce import (
    Group,
    MarginSpec,
    TargetAccess,
    _backward,
    _block_backward,
    _extra_logits,
    _Grads,
    _Operands,
    _operands,
    _target_psi_and_slope,
)


class ShardReducer(Protocol):
    """In-place reductions of a per-sample tensor over all shards (an all-reduce, or nothing)."""

    def all_reduce_max(self, tensor: torch.Tensor) -> None: ...

    def all_reduce_sum(self, tensor: torch.Tensor) -> None: ...


class LocalReducer:
    """One shard holds every class: nothing to combine."""

    def all_reduce_max(self, tensor: torch.Tensor) -> None:
        return None

    def all_reduce_sum(self, tensor: torch.Tensor) -> None:
        return None


@dataclass
class ShardGroup(Group):
    """Samples sharing one denominator, seen from one shard: batch rows `members`, the dense columns
    [lo, hi) of the shard's (possibly sampled) weight (empty when lo == hi), `target` relative to lo or −1
    where the target class lives on another shard, and the crossing entries on this shard (`extra_rows`
    local to the group, `extra_cols` columns of the shard's weight). The fields of `Group`."""


@dataclass
class _ShardState:
    """What one group's backward needs: cos θ of the dense block (None when empty), the rows and block
    columns of the local targets, their logits and dψ/dcos, the crossing logits, and (after the combine)
    the global log-sum-exp of every row."""

    cos: torch.Tensor | None
    target_rows: torch.Tensor
    target_cols: torch.Tensor
    target_logit: torch.Tensor
    target_slope: torch.Tensor | None
    extra_logits: torch.Tensor | None
    lse: torch.Tensor


def combine_shard_lse(
    local_lse: torch.Tensor, partial_target: torch.Tensor, reducer: ShardReducer
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global (log-sum-exp, target logit) per sample from every shard's local log-sum-exp (−inf where a
    shard holds none of the sample's columns) and target logit (0 where the target is elsewhere):
    max over shards, then one sum over shards of exp(local − max) and of the target logits."""
    peak = local_lse.clone()
    reducer.all_reduce_max(peak)
    stats = torch.stack([(local_lse - peak).exp(), partial_target])
    reducer.all_reduce_sum(stats)
    return peak + stats[0].log(), stats[1]


def _group_forward(x: torch.Tensor, ops: _Operands, group: ShardGroup) -> tuple[_ShardState, torch.Tensor]:
    """The group's state and its local log-sum-exp per row (x = the group's rows)."""
    rows = (group.target >= 0).nonzero().flatten()
    cols = group.target.index_select(0, rows)
    lse = x.new_full((x.shape[0],), float("-inf"))
    cos, slope, target_logit = None, None, x.new_zeros(0)
    if group.hi > group.lo:
        cos = torch.mm(ops.weight[group.lo : group.hi], x.t())
        if ops.inv_norm is not None:
            cos.mul_(ops.inv_norm[group.lo : group.hi, None])
            psi, slope = _target_psi_and_slope(cos[cols, rows], ops.spec)
            target_logit = ops.spec.s * psi
            logits = cos * ops.spec.s
        else:
            if ops.bias is not None:
                cos.add_(ops.bias[group.lo : group.hi, None])
            target_logit = cos[cols, rows]
            logits = cos.clone()
        logits.index_put_((cols, rows), target_logit)
        col_max = logits.amax(dim=0)
        lse = logits.sub_(col_max).exp_().sum(dim=0).log_().add_(col_max)
        del logits
    elif rows.numel():
        raise ValueError("a target class on this shard lies outside its group's dense columns")
    extra = None
    if group.extra_rows is not None and group.extra_rows.numel() > 0:
        extra = _extra_logits(x, ops, group)
        entry_rows = group.extra_rows
        shift = lse.scatter_reduce(0, entry_rows, extra, "amax", include_self=True)
        extra_sum = torch.zeros_like(lse).index_add_(0, entry_rows, (extra - shift[entry_rows]).exp())
        with_entries = extra_sum > 0
        lse = torch.where(with_entries, torch.logaddexp(lse, shift + extra_sum.log()), lse)
    return _ShardState(cos, rows, cols, target_logit, slope, extra, lse), lse


def _dense_backward(
    x: torch.Tensor, ops: _Operands, group: ShardGroup, state: _ShardState, scale: torch.Tensor, grads: _Grads
) -> None:
    """The block backward of `blockwise_ce`, with only the local targets one-hot (index_put_) and the
    x-gradient rows added (every shard contributes to them)."""
    rows, cols = state.target_rows, state.target_cols
    targets: TargetAccess = (lambda g: g[cols, rows], lambda g, v: g.index_put_((cols, rows), v))
    _block_backward(
        x, ops, (group.lo, group.hi, group.members), state, scale, grads, targets, torch.Tensor.index_add_
    )


class _ShardCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of all rows of x (identical on every shard after the combine); gradients for
    this shard's weight (complete) and for x (this shard's contribution)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        spec: MarginSpec,
        groups: list[ShardGroup],
        reducer: ShardReducer,
    ) -> torch.Tensor:
        ops = _operands(weight, bias, spec)
        local_lse = x.new_full((x.shape[0],), float("-inf"))
        partial_target = x.new_zeros(x.shape[0])
        states = []
        for group in groups:
            state, lse = _group_forward(x.index_select(0, group.members), ops, group)
            local_lse.index_copy_(0, group.members, lse)
            partial_target.index_copy_(0, group.members[state.target_rows], state.target_logit)
            states.append(state)
        lse, target = combine_shard_lse(local_lse, partial_target, reducer)
        for group, state in zip(groups, states, strict=True):
            state.lse = lse.index_select(0, group.members)
        ctx.save_for_backward(x, weight, bias, ops.inv_norm, ops.norm_slope)
        ctx.spec, ctx.groups, ctx.states = spec, groups, states
        return (lse - target).sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return (*_backward(ctx, grad_total, _dense_backward), None, None, None)


def shard_cross_entropy(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    spec: MarginSpec,
    groups: list[ShardGroup],
    reducer: ShardReducer,
) -> torch.Tensor:
    """Summed margin cross-entropy over every row of x (normalised already for margin kinds), this shard's
    columns combined with the other shards' through `reducer`."""
    result: torch.Tensor = _ShardCrossEntropy.apply(x, weight, bias, spec, groups, reducer)
    return result
