"""Dataset-aware margin softmax heads with crossing dropout (seed 004 Eq. 1-4 and 11; design.md §5.2)."""

from __future__ import annotations

from typing import TypedDict

import torch
import torch.nn.functional as F
from torch import nn

from facefleet.nn.blockwise_ce import (
    HEAD_KINDS,
    Group,
    HeadKind,
    MarginSpec,
    blockwise_cross_entropy,
    margin_target_cos,
)

__all__ = [
    "HEAD_KINDS",
    "DatasetAwareMarginHead",
    "HeadKind",
    "margin_target_cos",
    "plan_groups",
    "sample_crossing_positions",
]


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


def plan_groups(
    labels: torch.Tensor,
    dataset_index: torch.Tensor,
    classes_per_dataset: list[int],
    crossing_p: float,
    generator: torch.Generator | None,
    device: torch.device,
) -> list[Group]:
    """The denominators of one batch in global class indices: one group per dataset present (with its
    crossing draws), or a single group over all classes when crossing_p = 1. Raises ValueError when a
    label lies outside its dataset's classes."""
    offsets = [sum(classes_per_dataset[:k]) for k in range(len(classes_per_dataset))]
    by_dataset = _group_by_dataset(labels, dataset_index, classes_per_dataset, offsets)
    if crossing_p >= 1.0:
        everyone = torch.arange(labels.shape[0], device=labels.device)
        return [Group(everyone, 0, sum(classes_per_dataset), labels)]
    groups = []
    for k, members, local in by_dataset:
        group = Group(members, offsets[k], offsets[k] + classes_per_dataset[k], local)
        if crossing_p > 0.0:
            group.extra_rows, group.extra_cols = _draw_crossing(
                k, members.numel(), classes_per_dataset, offsets, crossing_p, generator, device
            )
        groups.append(group)
    return groups


def _group_by_dataset(
    labels: torch.Tensor, dataset_index: torch.Tensor, classes_per_dataset: list[int], offsets: list[int]
) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """(k, row indices, labels local to dataset k) for every dataset present in the batch."""
    groups = []
    for k, count in enumerate(classes_per_dataset):
        members = (dataset_index == k).nonzero().flatten()
        if members.numel() == 0:
            continue
        local = labels[members] - offsets[k]
        if bool(((local < 0) | (local >= count)).any()):
            raise ValueError(f"labels of dataset {k} must lie in [{offsets[k]}, {offsets[k] + count})")
        groups.append((k, members, local))
    return groups


def _draw_crossing(
    k: int,
    rows: int,
    classes_per_dataset: list[int],
    offsets: list[int],
    crossing_p: float,
    generator: torch.Generator | None,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row within the group, global class) of the crossing-dropout entries of dataset k's `rows`
    samples, drawn per other dataset ascending (the documented order)."""
    entry_rows, entry_cols = [], []
    for other, cols in enumerate(classes_per_dataset):
        if other == k:
            continue
        positions = sample_crossing_positions(rows, cols, crossing_p, generator, device)
        entry_rows.append(positions // cols)
        entry_cols.append(positions % cols + offsets[other])
    if not entry_rows:
        empty = torch.empty(0, dtype=torch.long, device=device)
        return empty, empty
    return torch.cat(entry_rows), torch.cat(entry_cols)


class MarginHeadOptions(TypedDict, total=False):
    """The margin hyperparameters every dataset-aware head takes as keywords (defaults and meaning as in
    `DatasetAwareMarginHead`)."""

    kind: HeadKind
    s: float
    m1: float
    m2: float
    m3: float
    crossing_p: float


def resolve_head_args(
    kind: HeadKind, classes_per_dataset: list[int], crossing_p: float, bias: bool | None
) -> bool:
    """Check a dataset-aware head's arguments (shared by the replicated and the sharded head); returns
    whether the head has a bias (softmax only; by default exactly when kind is softmax)."""
    if kind not in HEAD_KINDS:
        raise ValueError(f"unknown head kind {kind!r}; use one of {HEAD_KINDS}")
    if not classes_per_dataset or any(c <= 0 for c in classes_per_dataset):
        raise ValueError("classes_per_dataset must list a positive class count for every dataset")
    if not 0.0 <= crossing_p <= 1.0:
        raise ValueError(f"crossing_p must lie in [0, 1], got {crossing_p}")
    use_bias = (kind == "softmax") if bias is None else bias
    if use_bias and kind != "softmax":
        raise ValueError("a bias only exists for kind='softmax' (margin kinds normalise logits)")
    return use_bias


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
    with a hand-written backward (`facefleet.nn.blockwise_ce`; no double backward).
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
        use_bias = resolve_head_args(kind, classes_per_dataset, crossing_p, bias)
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
        spec = MarginSpec(self.kind, self.s, self.m1, self.m2, self.m3)
        total = blockwise_cross_entropy(x, self.weight, self.bias, spec, groups)
        return total / embeddings.shape[0]

    def _plan_groups(self, labels: torch.Tensor, dataset_index: torch.Tensor) -> list[Group]:
        """The denominators of this call (see `plan_groups`), crossing entries drawn with `generator`."""
        return plan_groups(
            labels,
            dataset_index,
            self.classes_per_dataset,
            self.crossing_p,
            self.generator,
            self.weight.device,
        )

    def extra_repr(self) -> str:
        return (
            f"embedding_dim={self.embedding_dim}, classes_per_dataset={self.classes_per_dataset}, "
            f"kind={self.kind}, s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}, "
            f"crossing_p={self.crossing_p}, bias={self.bias is not None}"
        )
