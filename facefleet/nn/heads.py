"""Dataset-aware margin softmax heads with crossing dropout (seed 004 Eq. 1-4 and 11; design.md §5.2)."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

HeadKind = Literal["softmax", "sphereface", "cosface", "arcface", "combined"]
HEAD_KINDS: tuple[str, ...] = ("softmax", "sphereface", "cosface", "arcface", "combined")

# acos has an infinite derivative at ±1; keeping cos a hair inside keeps gradients finite.
_COS_CLAMP = 1.0 - 1e-7


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
    rows: int, cols: int, p: float, generator: torch.Generator | None = None, device: torch.device | None = None
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
    count = int(torch.binomial(torch.tensor([float(total)], dtype=torch.float64),
                               torch.tensor([p], dtype=torch.float64), generator=generator).item())
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


class DatasetAwareMarginHead(nn.Module):
    """Identity classifier over K datasets whose softmax denominator stays inside each sample's dataset.

    `weight` is [C, D] with C = sum(classes_per_dataset); dataset k owns the rows
    [offset_k, offset_k + C_k) (`offsets[k]`). `bias` ([C]) exists only for kind="softmax" (when
    `bias=True`, the default there). Margin kinds normalise embeddings and weights and use
    logits s·cos θ with the target logit s·ψ(θ) (see `margin_target_cos`):
    sphereface uses m1, arcface m2, cosface m3, combined all three.
    Crossing dropout (seed Eq. 11): each class of another dataset also enters sample i's denominator
    independently with probability `crossing_p`, drawn afresh every call (0 = dataset-aware, 1 = the plain
    softmax over all C classes). Logits are computed per dataset block and for the sampled columns only.
    Set `generator` for reproducible crossing draws.
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

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, dataset_index: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the batch. embeddings [N, D]; labels [N] global class indices;
        dataset_index [N] in [0, K). Raises ValueError when a label lies outside its dataset's classes."""
        x, weights, biases = self._block_inputs(embeddings)
        total = embeddings.new_zeros(())
        for k in range(self.num_datasets):
            members = (dataset_index == k).nonzero().flatten()
            if members.numel() == 0:
                continue
            local = labels[members] - self.offsets[k]
            if bool(((local < 0) | (local >= self.classes_per_dataset[k])).any()):
                raise ValueError(f"labels of dataset {k} must lie in [{self.offsets[k]}, "
                                 f"{self.offsets[k] + self.classes_per_dataset[k]})")
            total = total + self._block_loss(x[members], local, k, weights, biases)
        return total / embeddings.shape[0]

    def _block_inputs(
        self, embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...] | None]:
        # split (not slicing) so the backward assembles the weight gradient once, not K full-size tensors
        if self.kind == "softmax":
            weights = torch.split(self.weight, self.classes_per_dataset)
            biases = torch.split(self.bias, self.classes_per_dataset) if self.bias is not None else None
            return embeddings, weights, biases
        weights = torch.split(F.normalize(self.weight, dim=1), self.classes_per_dataset)
        return F.normalize(embeddings, dim=1), weights, None

    def _logits(self, x: torch.Tensor, k: int, weights: tuple[torch.Tensor, ...],
                biases: tuple[torch.Tensor, ...] | None, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Unmargined logits of rows x against dataset k's classes (or the given local columns of it)."""
        w = weights[k] if columns is None else weights[k].index_select(0, columns)
        logits = x @ w.t()
        if self.kind != "softmax":
            return logits * self.s
        if biases is not None:
            logits = logits + (biases[k] if columns is None else biases[k].index_select(0, columns))
        return logits

    def _block_loss(self, x: torch.Tensor, local: torch.Tensor, k: int, weights: tuple[torch.Tensor, ...],
                    biases: tuple[torch.Tensor, ...] | None) -> torch.Tensor:
        """Summed loss of the samples of dataset k (x already normalised for margin kinds)."""
        logits = self._logits(x, k, weights, biases)
        if self.kind != "softmax":
            cos_target = logits.gather(1, local[:, None]) / self.s
            target = self.s * margin_target_cos(cos_target, self.kind, self.m1, self.m2, self.m3)
            logits = logits.scatter(1, local[:, None], target)
        else:
            target = logits.gather(1, local[:, None])
        parts = [torch.logsumexp(logits, dim=1)]
        for other in range(self.num_datasets):
            if other != k and self.crossing_p > 0.0:
                parts.append(self._crossing_logsumexp(x, other, weights, biases))
        lse = parts[0] if len(parts) == 1 else torch.logsumexp(torch.stack(parts, dim=1), dim=1)
        return (lse - target.squeeze(1)).sum()

    def _crossing_logsumexp(self, x: torch.Tensor, other: int, weights: tuple[torch.Tensor, ...],
                            biases: tuple[torch.Tensor, ...] | None) -> torch.Tensor:
        """Per-row logsumexp over the sampled classes of dataset `other` (−inf for rows with none)."""
        rows, cols = x.shape[0], self.classes_per_dataset[other]
        if self.crossing_p >= 1.0:
            return torch.logsumexp(self._logits(x, other, weights, biases), dim=1)
        positions = sample_crossing_positions(rows, cols, self.crossing_p, self.generator)
        if positions.numel() == 0:
            return x.new_full((rows,), -math.inf)
        positions = positions.to(x.device)
        row_of, col_of = positions // cols, positions % cols
        # only the union of sampled columns is multiplied: cheap when p·rows·cols ≪ cols
        columns, col_slot = torch.unique(col_of, return_inverse=True)
        logits = self._logits(x, other, weights, biases, columns)
        included = torch.zeros_like(logits, dtype=torch.bool)
        included[row_of, col_slot] = True
        # a finite floor, not −inf: a row with nothing sampled would otherwise give NaN gradients
        floor = torch.finfo(logits.dtype).min
        return torch.logsumexp(logits.masked_fill(~included, floor), dim=1)

    def extra_repr(self) -> str:
        return (f"embedding_dim={self.embedding_dim}, classes_per_dataset={self.classes_per_dataset}, "
                f"kind={self.kind}, s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}, "
                f"crossing_p={self.crossing_p}, bias={self.bias is not None}")
