"""Dataset-aware margin softmax heads with crossing dropout (seed 004 Eq. 1-4 and 11; design.md §5.2)."""

from __future__ import annotations

import math
from dataclasses import dataclass
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


@dataclass
class _Crossing:
    """One call's crossing-dropout draws: (rows, global columns) per (own, other) dataset pair, and the
    weights (and biases) of the union of drawn columns, gathered once."""

    draws: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]]
    union: torch.Tensor | None
    weight: torch.Tensor | None
    bias: torch.Tensor | None


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
        groups = self._group_by_dataset(labels, dataset_index)
        x = embeddings if self.kind == "softmax" else F.normalize(embeddings, dim=1)
        # split (not slicing) so the backward assembles the weight gradient once, not K full-size tensors
        weights = torch.split(self.weight, self.classes_per_dataset)
        biases = torch.split(self.bias, self.classes_per_dataset) if self.bias is not None else None
        crossing = self._draw_crossing(groups)
        total = embeddings.new_zeros(())
        for k, members, local in groups:
            total = total + self._block_loss(x[members], local, k, weights, biases, crossing)
        return total / embeddings.shape[0]

    def _group_by_dataset(self, labels: torch.Tensor,
                          dataset_index: torch.Tensor) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        """(k, row indices, labels local to dataset k) for every dataset present in the batch."""
        groups = []
        for k in range(self.num_datasets):
            members = (dataset_index == k).nonzero().flatten()
            if members.numel() == 0:
                continue
            local = labels[members] - self.offsets[k]
            if bool(((local < 0) | (local >= self.classes_per_dataset[k])).any()):
                raise ValueError(f"labels of dataset {k} must lie in [{self.offsets[k]}, "
                                 f"{self.offsets[k] + self.classes_per_dataset[k]})")
            groups.append((k, members, local))
        return groups

    def _draw_crossing(self, groups: list[tuple[int, torch.Tensor, torch.Tensor]]) -> _Crossing | None:
        """Draw the crossing-dropout classes of every (own dataset, other dataset) pair, 0 < p < 1 only."""
        if not 0.0 < self.crossing_p < 1.0:
            return None
        draws: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        for k, members, _ in groups:
            for other in range(self.num_datasets):
                if other == k:
                    continue
                cols = self.classes_per_dataset[other]
                positions = sample_crossing_positions(members.numel(), cols, self.crossing_p, self.generator)
                positions = positions.to(self.weight.device)
                draws[(k, other)] = (positions // cols, positions % cols + self.offsets[other])
        if not draws or all(rows.numel() == 0 for rows, _ in draws.values()):
            return _Crossing(draws, None, None, None)
        union = torch.unique(torch.cat([cols for _, cols in draws.values()]))
        # one gather for all pairs: its backward fills one [C, D] gradient, not one per pair
        weight = self.weight.index_select(0, union)
        bias = self.bias.index_select(0, union) if self.bias is not None else None
        return _Crossing(draws, union, weight, bias)

    def _class_logits(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        """Logits of rows x against class weights w without margin: W·x + b, or s·cos θ (x normalised)."""
        logits = x @ w.t()
        if self.kind == "softmax":
            return logits if b is None else logits + b
        # dividing the small logit block by ‖W_j‖ avoids materialising a normalised copy of W
        return logits * (self.s / w.norm(dim=1).clamp_min(1e-12))

    def _block_loss(self, x: torch.Tensor, local: torch.Tensor, k: int, weights: tuple[torch.Tensor, ...],
                    biases: tuple[torch.Tensor, ...] | None, crossing: _Crossing | None) -> torch.Tensor:
        """Summed loss of the samples of dataset k (x already normalised for margin kinds)."""
        logits = self._class_logits(x, weights[k], biases[k] if biases is not None else None)
        if self.kind != "softmax":
            cos_target = logits.gather(1, local[:, None]) / self.s
            target = self.s * margin_target_cos(cos_target, self.kind, self.m1, self.m2, self.m3)
            logits = logits.scatter(1, local[:, None], target)
        else:
            target = logits.gather(1, local[:, None])
        parts = [torch.logsumexp(logits, dim=1)]
        for other in range(self.num_datasets):
            if other == k or self.crossing_p == 0.0:
                continue
            if crossing is None:  # crossing_p == 1: every class of every dataset
                other_bias = biases[other] if biases is not None else None
                parts.append(torch.logsumexp(self._class_logits(x, weights[other], other_bias), dim=1))
            else:
                parts.append(self._crossing_logsumexp(x, crossing, k, other))
        lse = parts[0] if len(parts) == 1 else torch.logsumexp(torch.stack(parts, dim=1), dim=1)
        return (lse - target.squeeze(1)).sum()

    def _crossing_logsumexp(self, x: torch.Tensor, crossing: _Crossing, k: int, other: int) -> torch.Tensor:
        """Per-row logsumexp over the drawn classes of dataset `other` (−inf for rows with none)."""
        row_of, global_col = crossing.draws[(k, other)]
        if row_of.numel() == 0 or crossing.union is None or crossing.weight is None:
            return x.new_full((x.shape[0],), -math.inf)
        # only the columns drawn for this pair are multiplied: cheap when p·rows·cols ≪ cols
        columns, col_slot = torch.unique(global_col, return_inverse=True)
        in_union = torch.searchsorted(crossing.union, columns)
        w = crossing.weight.index_select(0, in_union)
        b = crossing.bias.index_select(0, in_union) if crossing.bias is not None else None
        logits = self._class_logits(x, w, b)
        included = torch.zeros_like(logits, dtype=torch.bool)
        included[row_of, col_slot] = True
        # a finite floor, not −inf: a row with nothing drawn would otherwise give NaN gradients
        floor = torch.finfo(logits.dtype).min
        return torch.logsumexp(logits.masked_fill(~included, floor), dim=1)

    def extra_repr(self) -> str:
        return (f"embedding_dim={self.embedding_dim}, classes_per_dataset={self.classes_per_dataset}, "
                f"kind={self.kind}, s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}, "
                f"crossing_p={self.crossing_p}, bias={self.bias is not None}")
