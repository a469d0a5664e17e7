"""The dataset-aware margin cross-entropy kernel: the margin ψ(θ) and a block-wise autograd Function.

Split from `facefleet.nn.heads` (which plans the groups and owns the parameters): this module holds only
the tensor math of seed 004 Eq. 1-4 and 11, with a hand-written backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch

HeadKind = Literal["softmax", "sphereface", "cosface", "arcface", "combined"]
HEAD_KINDS: tuple[str, ...] = ("softmax", "sphereface", "cosface", "arcface", "combined")

# acos has an infinite derivative at ±1; keeping cos a hair inside keeps gradients finite.
_COS_CLAMP = 1.0 - 1e-7
# F.normalize's default eps: weight rows are divided by max(‖W_j‖, eps)
_NORM_EPS = 1e-12


def margin_target_cos(cos_target: torch.Tensor, kind: str, m1: float, m2: float, m3: float) -> torch.Tensor:
    """The margin-adjusted target cosine ψ(θ) for one sample per row (before multiplying by the scale s).

    arcface: cos(θ + m2), and the standard fallback cos θ − m2·sin(m2) once θ + m2 > π (no acos, no NaN).
    cosface: cos θ − m3.
    sphereface / combined: with a = m1·θ + m2, ψ = (−1)^k·cos(a) − 2k − m3 where k = ⌊a/π⌋ — the
    SphereFace monotone extension, which equals cos(a) − m3 whenever a ≤ π and stays finite and
    decreasing beyond it.
    """
    if kind == "cosface":
        return cos_target - m3
    if kind == "arcface":
        sin_target = torch.sqrt((1.0 - cos_target * cos_target).clamp_min(1e-12))
        shifted = cos_target * math.cos(m2) - sin_target * math.sin(m2)
        # θ + m2 ≤ π  ⇔  cos θ ≥ cos(π − m2)
        return torch.where(cos_target >= math.cos(math.pi - m2), shifted, cos_target - m2 * math.sin(m2))
    if kind in ("sphereface", "combined"):
        theta = torch.acos(cos_target.clamp(-_COS_CLAMP, _COS_CLAMP))
        angle = m1 * theta + m2
        k = torch.floor(angle / math.pi).detach()
        sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
        return sign * torch.cos(angle) - 2.0 * k - m3
    raise ValueError(f"no margin for head kind {kind!r}; use one of {HEAD_KINDS}")


@dataclass(frozen=True)
class MarginSpec:
    """The hyperparameters the loss kernel needs (kind and s, m1, m2, m3 as in `DatasetAwareMarginHead`)."""

    kind: str
    s: float
    m1: float
    m2: float
    m3: float


@dataclass
class _Operands:
    """Weight, bias and spec of one call; for margin kinds also 1/‖W_j‖ (clamped like F.normalize) and
    `norm_slope`, the same where the norm gets a gradient and 0 for rows shorter than eps."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    spec: MarginSpec
    inv_norm: torch.Tensor | None = None
    norm_slope: torch.Tensor | None = None


@dataclass
class Group:
    """The samples sharing one denominator: batch rows `members`, a dense column range [lo, hi) (their own
    dataset, or all classes when crossing_p = 1) with targets `target` local to it, and the crossing-dropout
    entries (`extra_rows` local to the group, global `extra_cols`) for 0 < crossing_p < 1."""

    members: torch.Tensor
    lo: int
    hi: int
    target: torch.Tensor
    extra_rows: torch.Tensor | None = None
    extra_cols: torch.Tensor | None = None


@dataclass
class _GroupState:
    """What the backward of one group needs: cos θ (raw logits for softmax) of the dense block, the
    log-sum-exp per sample, the target logit and dψ/dcos, and the logits of the crossing entries."""

    cos: torch.Tensor
    lse: torch.Tensor
    target_logit: torch.Tensor
    target_slope: torch.Tensor | None
    extra_logits: torch.Tensor | None


@dataclass
class _Grads:
    """The gradient buffers being filled (None where that input needs no gradient)."""

    x: torch.Tensor | None
    weight: torch.Tensor | None
    bias: torch.Tensor | None


class _BlockState(Protocol):
    """What a block backward reads of a group's state (`_GroupState` here, a shard's state in sharded_ce)."""

    @property
    def cos(self) -> torch.Tensor | None: ...
    @property
    def lse(self) -> torch.Tensor: ...
    @property
    def target_logit(self) -> torch.Tensor: ...
    @property
    def target_slope(self) -> torch.Tensor | None: ...


# (read, write) of the one-hot target positions of a [C_k, n_k] block
TargetAccess = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor, torch.Tensor], object]]


def _operands(weight: torch.Tensor, bias: torch.Tensor | None, spec: MarginSpec) -> _Operands:
    """The call's operands; for margin kinds with 1/‖W_j‖ and the norm slope."""
    ops = _Operands(weight, bias, spec)
    if spec.kind != "softmax":
        norm = torch.linalg.vector_norm(weight, dim=1)
        ops.inv_norm = norm.clamp_min(_NORM_EPS).reciprocal_()
        # like F.normalize: a row shorter than eps is divided by eps, so no gradient flows via its norm
        ops.norm_slope = torch.where(norm > _NORM_EPS, ops.inv_norm, 0.0)
    return ops


def _grad_buffers(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> _Grads:
    """Zeroed x and bias buffers and an uninitialised weight buffer (every row is written), where needed."""
    needs = ctx.needs_input_grad
    return _Grads(
        torch.zeros_like(x) if needs[0] else None,
        torch.empty_like(weight) if needs[1] else None,
        torch.zeros_like(bias) if bias is not None and needs[2] else None,
    )


def _target_psi_and_slope(cos_target: torch.Tensor, spec: MarginSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """ψ(cos θ) of the target column and its derivative, by autograd on the n target values only."""
    with torch.enable_grad():
        cos = cos_target.detach().requires_grad_(True)
        psi = margin_target_cos(cos, spec.kind, spec.m1, spec.m2, spec.m3)
        (slope,) = torch.autograd.grad(psi.sum(), cos)
    return psi.detach(), slope


def _extra_logits(x: torch.Tensor, ops: _Operands, group: Group) -> torch.Tensor:
    """Logits of the crossing entries: one dot product per (row, drawn class), never a row × column block."""
    assert group.extra_rows is not None and group.extra_cols is not None
    cols = group.extra_cols
    dots = (x.index_select(0, group.extra_rows) * ops.weight.index_select(0, cols)).sum(dim=1)
    if ops.inv_norm is not None:
        return dots * (ops.spec.s * ops.inv_norm.index_select(0, cols))
    return dots if ops.bias is None else dots + ops.bias.index_select(0, cols)


def _group_forward(x: torch.Tensor, ops: _Operands, group: Group) -> tuple[_GroupState, torch.Tensor]:
    """Summed cross-entropy of one group (x = its rows) and what its backward needs.

    The block is kept class-major, [C_k, n_k] = W_k·xᵀ: with few rows per dataset that product runs
    faster on the CPU than x·W_kᵀ, and the backward products take this layout as it is.
    """
    target = group.target[None, :]
    cos = torch.mm(ops.weight[group.lo : group.hi], x.t())
    slope = None
    if ops.inv_norm is not None:
        cos.mul_(ops.inv_norm[group.lo : group.hi, None])
        psi, slope = _target_psi_and_slope(cos.gather(0, target), ops.spec)
        target_logit = ops.spec.s * psi
        logits = cos * ops.spec.s
    else:
        if ops.bias is not None:
            cos.add_(ops.bias[group.lo : group.hi, None])
        target_logit = cos.gather(0, target)
        logits = cos.clone()
    # in place on one scratch block: no further C_k × n_k temporaries; backward reuses `cos`
    logits.scatter_(0, target, target_logit)
    col_max = logits.amax(dim=0)
    lse = logits.sub_(col_max).exp_().sum(dim=0).log_().add_(col_max)
    del logits
    extra = None
    if group.extra_rows is not None and group.extra_rows.numel() > 0:
        extra = _extra_logits(x, ops, group)
        rows = group.extra_rows
        # shift by max(dense lse, largest entry) so no exp overflows; rows without entries add −inf
        shift = lse.scatter_reduce(0, rows, extra, "amax", include_self=True)
        extra_sum = torch.zeros_like(lse).index_add_(0, rows, (extra - shift[rows]).exp())
        lse = torch.logaddexp(lse, shift + extra_sum.log())
    target_logit = target_logit.squeeze(0)
    return _GroupState(cos, lse, target_logit, slope, extra), (lse - target_logit).sum()


def _block_backward(
    x: torch.Tensor,
    ops: _Operands,
    block: tuple[int, int, torch.Tensor],
    state: _BlockState,
    scale: torch.Tensor,
    grads: _Grads,
    targets: TargetAccess,
    write_x: Callable[..., torch.Tensor],
) -> None:
    """Fill the weight rows lo:hi (and bias) of the buffers and the block's rows of the x gradient, for
    `block` = (lo, hi, members) and the state's `cos`, `lse`, `target_logit`, `target_slope`.

    softmax − one-hot is formed in one [C_k, n_k] buffer; for margin kinds it becomes diag(1/‖W_j‖)·H with
    H = dL/dcos, so dL/dx̂ = H′ᵀW and dL/dW_j = (H′x̂)_j − (Σ_i H′_ji cos_ji)·W_j/‖W_j‖.
    `targets` = (read, write) of the one-hot positions in the block (a gather/scatter over one target per
    column here, index_put_ over the local targets only for a shard); `write_x` puts the x-gradient rows
    (index_copy_ where each row has one group, index_add_ where shards add their contributions).
    """
    assert state.cos is not None
    lo, hi, members = block
    read_targets, write_targets = targets
    s = ops.spec.s
    w = ops.weight[lo:hi]
    grad = state.cos * s if ops.inv_norm is not None else state.cos.clone()
    write_targets(grad, state.target_logit)
    grad.sub_(state.lse).exp_()
    target_grad = read_targets(grad) - 1.0
    if state.target_slope is not None:
        target_grad = target_grad * state.target_slope
    write_targets(grad, target_grad)
    if ops.inv_norm is not None:
        grad.mul_(ops.inv_norm[lo:hi, None] * (s * scale))
    else:
        grad.mul_(scale)
    if grads.weight is not None:
        out = grads.weight[lo:hi]
        if ops.norm_slope is not None:
            coef = torch.einsum("ji,ji->j", grad, state.cos).mul_(ops.norm_slope[lo:hi])
            # the norm term first, the product added onto it: one pass fewer over [C_k, D] than mm + addcmul_
            torch.mul(w, coef.neg_()[:, None], out=out)
            out.addmm_(grad, x)
        else:
            torch.mm(grad, x, out=out)
    if grads.bias is not None:
        torch.sum(grad, dim=1, out=grads.bias[lo:hi])
    if grads.x is not None:
        write_x(grads.x, 0, members, torch.mm(grad.t(), w))


def _dense_backward(
    x: torch.Tensor, ops: _Operands, group: Group, state: _GroupState, scale: torch.Tensor, grads: _Grads
) -> None:
    """The group's block backward: one target per column (gather/scatter), x rows written once."""
    target = group.target[None, :]
    targets: TargetAccess = (
        lambda g: g.gather(0, target),
        lambda g, v: g.scatter_(0, target, v.reshape(target.shape)),
    )
    _block_backward(
        x, ops, (group.lo, group.hi, group.members), state, scale, grads, targets, torch.Tensor.index_copy_
    )


def _extra_backward(
    x: torch.Tensor, ops: _Operands, group: Group, state: _GroupState, scale: torch.Tensor, grads: _Grads
) -> None:
    """Add the crossing entries' gradients, into the drawn weight rows only (index_put_ with accumulate:
    on the CPU, index_add_ into a large tensor costs about a pass over all of it)."""
    assert group.extra_rows is not None and group.extra_cols is not None and state.extra_logits is not None
    rows, cols = group.extra_rows, group.extra_cols
    grad = (state.extra_logits - state.lse[rows]).exp_().mul_(scale)
    w = ops.weight.index_select(0, cols)
    if ops.inv_norm is not None:
        grad = grad * (ops.spec.s * ops.inv_norm.index_select(0, cols))
    if grads.weight is not None:
        update = grad[:, None] * x.index_select(0, rows)
        if ops.norm_slope is not None:
            # logit = s·cos, so the norm term's coefficient H′·cos/‖W_j‖ is H′·logit·slope/s
            coef = grad * state.extra_logits * ops.norm_slope.index_select(0, cols) * (1.0 / ops.spec.s)
            update -= coef[:, None] * w
        grads.weight.index_put_((cols,), update, accumulate=True)
    if grads.bias is not None:
        grads.bias.index_put_((cols,), grad, accumulate=True)
    if grads.x is not None:
        grads.x.index_add_(0, group.members[rows], grad[:, None] * w)


def _backward(
    ctx: Any, grad_total: torch.Tensor, dense_backward: Callable[..., None]
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The (x, weight, bias) gradients of a saved call (this module's or a shard's): every group's dense
    block through ``dense_backward``, rows no dense block covers zeroed, then the crossing entries."""
    x, weight, bias, inv_norm, norm_slope = ctx.saved_tensors
    ops = _Operands(weight, bias, ctx.spec, inv_norm, norm_slope)
    grads = _grad_buffers(ctx, x, weight, bias)
    covered = torch.zeros(weight.shape[0], dtype=torch.bool, device=weight.device)
    for group, state in zip(ctx.groups, ctx.states, strict=True):
        if state.cos is not None:  # a shard's group may have no dense columns there
            dense_backward(x.index_select(0, group.members), ops, group, state, grad_total, grads)
            covered[group.lo : group.hi] = True
    if grads.weight is not None and not bool(covered.all()):
        grads.weight[~covered] = 0.0  # classes no sample of this batch has in its dense block
    for group, state in zip(ctx.groups, ctx.states, strict=True):
        if state.extra_logits is not None:
            _extra_backward(x.index_select(0, group.members), ops, group, state, grad_total, grads)
    return grads.x, grads.weight, grads.bias


class _BlockwiseCrossEntropy(torch.autograd.Function):
    """Summed dataset-aware margin cross-entropy over groups, with a hand-written backward.

    Autograd through the block-wise ops would store several C_k × N_k intermediates and assemble K
    full-size weight gradients; here each group keeps one block (cos θ), and the weight gradient is written
    once, block by block, into a single [C, D] buffer, crossing entries adding into their rows only.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        spec: MarginSpec,
        groups: list[Group],
    ) -> torch.Tensor:
        ops = _operands(weight, bias, spec)
        total = x.new_zeros(())
        states = []
        for group in groups:
            state, loss = _group_forward(x.index_select(0, group.members), ops, group)
            states.append(state)
            total += loss
        ctx.save_for_backward(x, weight, bias, ops.inv_norm, ops.norm_slope)
        ctx.spec, ctx.groups, ctx.states = spec, groups, states
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return (*_backward(ctx, grad_total, _dense_backward), None, None)


def blockwise_cross_entropy(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: MarginSpec, groups: list[Group]
) -> torch.Tensor:
    """Summed margin cross-entropy of `groups` over rows of x (normalised already for margin kinds)."""
    result: torch.Tensor = _BlockwiseCrossEntropy.apply(x, weight, bias, spec, groups)
    return result
