"""Dataset-aware margin softmax heads with crossing dropout (seed 004 Eq. 1-4 and 11; design.md §5.2)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

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


def sample_crossing_positions(
    rows: int,
    cols: int,
    p: float,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Flat positions in [0, rows·cols) of an exact Bernoulli(p) mask, without rows·cols random numbers.

    The count M ~ Binomial(rows·cols, p); given M, the set of included positions of independent
    Bernoulli draws is a uniform M-subset. That subset is drawn by repeated uniform draws with
    duplicates removed (permutation-symmetric, hence exactly uniform), so the cost is O(M), or O(L − M)
    via the complement when p > ½. Returns a sorted int64 tensor.
    """
    total = rows * cols
    if p <= 0.0 or total == 0:
        return torch.empty(0, dtype=torch.long, device=device)
    if p >= 1.0:
        return torch.arange(total, device=device)
    count = int(
        torch.binomial(
            torch.tensor([float(total)], dtype=torch.float64),
            torch.tensor([p], dtype=torch.float64),
            generator=generator,
        ).item()
    )
    if count > total // 2:
        excluded = _uniform_subset(total, total - count, generator)
        keep = torch.ones(total, dtype=torch.bool)
        keep[excluded] = False
        return keep.nonzero().flatten().to(device)
    return _uniform_subset(total, count, generator).to(device)


def _uniform_subset(total: int, count: int, generator: torch.Generator | None) -> torch.Tensor:
    """A uniformly random `count`-subset of range(total), sorted, for count ≤ total/2 (expected O(count))."""
    chosen = torch.empty(0, dtype=torch.long)
    while chosen.numel() < count:
        missing = count - chosen.numel()
        draws = torch.randint(0, total, (missing,), generator=generator)
        chosen = torch.unique(torch.cat([chosen, draws]))
    return chosen


@dataclass(frozen=True)
class _MarginSpec:
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
    spec: _MarginSpec
    inv_norm: torch.Tensor | None = None
    norm_slope: torch.Tensor | None = None


@dataclass
class _Group:
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


def _target_psi_and_slope(cos_target: torch.Tensor, spec: _MarginSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """ψ(cos θ) of the target column and its derivative, by autograd on the n target values only."""
    with torch.enable_grad():
        cos = cos_target.detach().requires_grad_(True)
        psi = margin_target_cos(cos, spec.kind, spec.m1, spec.m2, spec.m3)
        (slope,) = torch.autograd.grad(psi.sum(), cos)
    return psi.detach(), slope


def _extra_logits(x: torch.Tensor, ops: _Operands, group: _Group) -> torch.Tensor:
    """Logits of the crossing entries: one dot product per (row, drawn class), never a row × column block."""
    assert group.extra_rows is not None and group.extra_cols is not None
    cols = group.extra_cols
    dots = (x.index_select(0, group.extra_rows) * ops.weight.index_select(0, cols)).sum(dim=1)
    if ops.inv_norm is not None:
        return dots * (ops.spec.s * ops.inv_norm.index_select(0, cols))
    return dots if ops.bias is None else dots + ops.bias.index_select(0, cols)


def _group_forward(x: torch.Tensor, ops: _Operands, group: _Group) -> tuple[_GroupState, torch.Tensor]:
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


def _dense_backward(
    x: torch.Tensor, ops: _Operands, group: _Group, state: _GroupState, scale: torch.Tensor, grads: _Grads
) -> None:
    """Fill the weight rows lo:hi (and bias) of the buffers and the group's rows of the x gradient.

    softmax − one-hot is formed in one [C_k, n_k] buffer; for margin kinds it becomes diag(1/‖W_j‖)·H with
    H = dL/dcos, so dL/dx̂ = H′ᵀW and dL/dW_j = (H′x̂)_j − (Σ_i H′_ji cos_ji)·W_j/‖W_j‖.
    """
    target, s = group.target[None, :], ops.spec.s
    w = ops.weight[group.lo : group.hi]
    grad = state.cos * s if ops.inv_norm is not None else state.cos.clone()
    grad.scatter_(0, target, state.target_logit[None, :])
    grad.sub_(state.lse).exp_()
    target_grad = grad.gather(0, target) - 1.0
    if state.target_slope is not None:
        target_grad = target_grad * state.target_slope
    grad.scatter_(0, target, target_grad)
    if ops.inv_norm is not None:
        grad.mul_(ops.inv_norm[group.lo : group.hi, None] * (s * scale))
    else:
        grad.mul_(scale)
    if grads.weight is not None:
        out = grads.weight[group.lo : group.hi]
        if ops.norm_slope is not None:
            coef = torch.einsum("ji,ji->j", grad, state.cos).mul_(ops.norm_slope[group.lo : group.hi])
            # the norm term first, the product added onto it: one pass fewer over [C_k, D] than mm + addcmul_
            torch.mul(w, coef.neg_()[:, None], out=out)
            out.addmm_(grad, x)
        else:
            torch.mm(grad, x, out=out)
    if grads.bias is not None:
        torch.sum(grad, dim=1, out=grads.bias[group.lo : group.hi])
    if grads.x is not None:
        grads.x.index_copy_(0, group.members, torch.mm(grad.t(), w))


def _extra_backward(
    x: torch.Tensor, ops: _Operands, group: _Group, state: _GroupState, scale: torch.Tensor, grads: _Grads
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
        spec: _MarginSpec,
        groups: list[_Group],
    ) -> torch.Tensor:
        ops = _Operands(weight, bias, spec)
        if spec.kind != "softmax":
            norm = torch.linalg.vector_norm(weight, dim=1)
            ops.inv_norm = norm.clamp_min(_NORM_EPS).reciprocal_()
            # like F.normalize: a row shorter than eps is divided by eps, so no gradient flows via its norm
            ops.norm_slope = torch.where(norm > _NORM_EPS, ops.inv_norm, 0.0)
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
        x, weight, bias, inv_norm, norm_slope = ctx.saved_tensors
        ops = _Operands(weight, bias, ctx.spec, inv_norm, norm_slope)
        needs = ctx.needs_input_grad
        grads = _Grads(
            torch.zeros_like(x) if needs[0] else None,
            torch.empty_like(weight) if needs[1] else None,
            torch.zeros_like(bias) if bias is not None and needs[2] else None,
        )
        covered = torch.zeros(weight.shape[0], dtype=torch.bool, device=weight.device)
        for group, state in zip(ctx.groups, ctx.states, strict=True):
            _dense_backward(x.index_select(0, group.members), ops, group, state, grad_total, grads)
            covered[group.lo : group.hi] = True
        if grads.weight is not None and not bool(covered.all()):
            grads.weight[~covered] = 0.0  # classes of datasets absent from the batch
        for group, state in zip(ctx.groups, ctx.states, strict=True):
            if state.extra_logits is not None:
                _extra_backward(x.index_select(0, group.members), ops, group, state, grad_total, grads)
        return grads.x, grads.weight, grads.bias, None, None


class DatasetAwareMarginHead(nn.Module):
    """Identity classifier over K datasets whose softmax denominator stays inside each sample's dataset.

    `weight` is [C, D] with C = sum(classes_per_dataset); dataset k owns the rows
    [offset_k, offset_k + C_k) (`offsets[k]`). `bias` ([C]) exists only for kind="softmax" (when
    `bias=True`, the default there). Margin kinds normalise embeddings and weights and use
    logits s·cos θ with the target logit s·ψ(θ) (see `margin_target_cos`):
    sphereface uses m1, arcface m2, cosface m3, combined all three.
    Crossing dropout (seed Eq. 11): each class of another dataset also enters sample i's denominator
    independently with probability `crossing_p`, drawn afresh every call (0 = dataset-aware, 1 = the plain
    softmax over all C classes). Logits are computed per dataset block and for the sampled entries only,
    with a hand-written backward (`_BlockwiseCrossEntropy`; no double backward).
    Set `generator` for reproducible crossing draws; they are made per own dataset k ascending, then per
    other dataset ascending, with `sample_crossing_positions(n_k, C_other, crossing_p, generator)`.
    """

    def __init__(
        self,
        embedding_dim: int,
        classes_per_dataset: list[int],
        kind: HeadKind = "arcface",
        s: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.5,
        m3: float = 0.0,
        crossing_p: float = 0.0,
        bias: bool | None = None,
    ) -> None:
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ValueError(f"unknown head kind {kind!r}; use one of {HEAD_KINDS}")
        if not classes_per_dataset or any(c <= 0 for c in classes_per_dataset):
            raise ValueError("classes_per_dataset must list a positive class count for every dataset")
        if not 0.0 <= crossing_p <= 1.0:
            raise ValueError(f"crossing_p must lie in [0, 1], got {crossing_p}")
        use_bias = (kind == "softmax") if bias is None else bias
        if use_bias and kind != "softmax":
            raise ValueError("a bias only exists for kind='softmax' (margin kinds normalise logits)")
        self.embedding_dim = embedding_dim
        self.classes_per_dataset = list(classes_per_dataset)
        self.offsets = [sum(classes_per_dataset[:k]) for k in range(len(classes_per_dataset))]
        self.num_classes = sum(classes_per_dataset)
        self.kind = kind
        self.s, self.m1, self.m2, self.m3 = s, m1, m2, m3
        self.crossing_p = crossing_p
        self.generator: torch.Generator | None = None
        self.weight = nn.Parameter(torch.empty(self.num_classes, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)
        self.bias = nn.Parameter(torch.zeros(self.num_classes)) if use_bias else None

    @property
    def num_datasets(self) -> int:
        return len(self.classes_per_dataset)

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, dataset_index: torch.Tensor
    ) -> torch.Tensor:
        """Mean cross-entropy over the batch. embeddings [N, D]; labels [N] global class indices;
        dataset_index [N] in [0, K). Raises ValueError when a label lies outside its dataset's classes."""
        groups = self._plan_groups(labels, dataset_index)
        x = embeddings if self.kind == "softmax" else F.normalize(embeddings, dim=1)
        spec = _MarginSpec(self.kind, self.s, self.m1, self.m2, self.m3)
        total = _BlockwiseCrossEntropy.apply(x, self.weight, self.bias, spec, groups)
        return total / embeddings.shape[0]

    def _plan_groups(self, labels: torch.Tensor, dataset_index: torch.Tensor) -> list[_Group]:
        """The denominators of this call: one group per dataset present (with its crossing draws), or a
        single group over all classes when crossing_p = 1."""
        by_dataset = self._group_by_dataset(labels, dataset_index)
        if self.crossing_p >= 1.0:
            return [_Group(torch.arange(labels.shape[0], device=labels.device), 0, self.num_classes, labels)]
        groups = []
        for k, members, local in by_dataset:
            group = _Group(members, self.offsets[k], self.offsets[k] + self.classes_per_dataset[k], local)
            if self.crossing_p > 0.0:
                group.extra_rows, group.extra_cols = self._draw_crossing(k, members.numel())
            groups.append(group)
        return groups

    def _group_by_dataset(
        self, labels: torch.Tensor, dataset_index: torch.Tensor
    ) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        """(k, row indices, labels local to dataset k) for every dataset present in the batch."""
        groups = []
        for k in range(self.num_datasets):
            members = (dataset_index == k).nonzero().flatten()
            if members.numel() == 0:
                continue
            local = labels[members] - self.offsets[k]
            if bool(((local < 0) | (local >= self.classes_per_dataset[k])).any()):
                raise ValueError(
                    f"labels of dataset {k} must lie in [{self.offsets[k]}, "
                    f"{self.offsets[k] + self.classes_per_dataset[k]})"
                )
            groups.append((k, members, local))
        return groups

    def _draw_crossing(self, k: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(row within the group, global class) of the crossing-dropout entries of dataset k's `rows`
        samples, drawn per other dataset ascending (the documented order)."""
        entry_rows, entry_cols = [], []
        for other in range(self.num_datasets):
            if other == k:
                continue
            cols = self.classes_per_dataset[other]
            positions = sample_crossing_positions(rows, cols, self.crossing_p, self.generator)
            positions = positions.to(self.weight.device)
            entry_rows.append(positions // cols)
            entry_cols.append(positions % cols + self.offsets[other])
        if not entry_rows:
            empty = torch.empty(0, dtype=torch.long, device=self.weight.device)
            return empty, empty
        return torch.cat(entry_rows), torch.cat(entry_cols)

    def extra_repr(self) -> str:
        return (
            f"embedding_dim={self.embedding_dim}, classes_per_dataset={self.classes_per_dataset}, "
            f"kind={self.kind}, s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}, "
            f"crossing_p={self.crossing_p}, bias={self.bias is not None}"
        )
