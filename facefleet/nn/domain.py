"""Gradient reversal and the dataset classifier for dataset-invariant embeddings (seed 004 Eq. 5-10)."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from facefleet.nn.biometricnet import _GradientScale


def grad_reverse(x: torch.Tensor, lambd: float = 1.0) -> torch.Tensor:
    """Identity in the forward pass; multiplies the incoming gradient by −lambd in the backward pass."""
    return _GradientScale.apply(x, -float(lambd))


class DatasetClassifier(nn.Module):
    """G_d: a linear layer (optionally after one hidden layer) embedding [N, D] -> dataset logits [N, K].

    With `normalize` (default) it classifies the L2-normalised embedding, the vector verification
    compares. Why: margin heads ignore the embedding's length, so under reversal the embedding net can
    otherwise inflate that length without bound to make the classifier confidently wrong; measured
    in tests/nn/test_learning.py this drove held-out accuracy to chance.

    With `hidden` > 0 a hidden layer of that width (ReLU) comes first: a linear classifier on the unit
    sphere is weak, so reversal against it removes only linearly readable dataset information.
    """

    def __init__(
        self, embedding_dim: int, num_datasets: int, normalize: bool = True, hidden: int = 0
    ) -> None:
        super().__init__()
        if num_datasets < 1:
            raise ValueError("a dataset classifier needs at least one dataset")
        if hidden < 0:
            raise ValueError("hidden must be >= 0")
        self.num_datasets = num_datasets
        self.normalize = normalize
        self.hidden = (
            nn.Sequential(nn.Linear(embedding_dim, hidden), nn.ReLU()) if hidden > 0 else nn.Identity()
        )
        self.linear = nn.Linear(hidden or embedding_dim, num_datasets)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.linear(self.hidden(F.normalize(embeddings, dim=1) if self.normalize else embeddings))


ReversalSchedule = Literal["step", "ramp"]


def reversal_lambda(
    step: int,
    switch_step: int | None,
    total_steps: int,
    lambd: float,
    schedule: ReversalSchedule = "step",
    gamma: float = 10.0,
) -> float:
    """The reversal weight at `step`: 0 before `switch_step` (or without reversal); from it, `lambd`
    ("step") or DANN's ramp lambd·(2 / (1 + exp(−gamma·p)) − 1) with p the share of stage 2 done
    ("ramp": starts at 0, so the fresh reversal does not knock the embedding off course, and reaches
    ~lambd by the end of the run)."""
    if not in_reversal_stage(step, switch_step):
        return 0.0
    if schedule == "step":
        return float(lambd)
    assert switch_step is not None
    progress = min(1.0, max(0.0, (step - switch_step) / max(1, total_steps - switch_step)))
    return float(lambd) * (2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0)


def in_reversal_stage(step: int, switch_step: int | None) -> bool:
    """True from `switch_step` on (stage 2); never when switch_step is None (reversal disabled)."""
    return switch_step is not None and step >= switch_step


def domain_loss(
    classifier: DatasetClassifier,
    embeddings: torch.Tensor,
    dataset_index: torch.Tensor,
    *,
    step: int,
    switch_step: int | None,
    lambd: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dataset-classifier loss of the two-stage schedule (design.md §5.3); add it to the identity loss.

    Stage 1 (step < switch_step, or switch_step None): the classifier learns on `embeddings.detach()`, so
    the embedding net gets no gradient from it (Eq. 9-10). Stage 2: the embeddings pass through
    `grad_reverse(·, lambd)`, so the classifier still minimises its loss while the embedding net receives
    −lambd times that gradient (Eq. 7-8). Returns (mean cross-entropy, accuracy as a 0-d tensor without grad).
    """
    if in_reversal_stage(step, switch_step):
        features = grad_reverse(embeddings, lambd)
    else:
        features = embeddings.detach()
    logits = classifier(features)
    loss = F.cross_entropy(logits, dataset_index)
    with torch.no_grad():
        accuracy = (logits.argmax(dim=1) == dataset_index).float().mean()
    return loss, accuracy
