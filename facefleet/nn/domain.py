"""Gradient reversal and the dataset classifier for dataset-invariant embeddings (seed 004 Eq. 5-10)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lambd: float) -> torch.Tensor:
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad_output * -ctx.lambd, None


def grad_reverse(x: torch.Tensor, lambd: float = 1.0) -> torch.Tensor:
    """Identity in the forward pass; multiplies the incoming gradient by −lambd in the backward pass."""
    return _GradientReversal.apply(x, float(lambd))


class DatasetClassifier(nn.Module):
    """G_d: a linear layer embedding [N, D] -> dataset logits [N, K].

    With `normalize` (default) it classifies the L2-normalised embedding, the vector verification
    compares. Why: margin heads ignore the embedding's length, so under reversal the embedding net can
    otherwise inflate that length without bound to make the classifier confidently wrong; measured
    in tests/nn/test_learning.py this drove held-out accuracy to chance.
    """

    def __init__(self, embedding_dim: int, num_datasets: int, normalize: bool = True) -> None:
        super().__init__()
        if num_datasets < 1:
            raise ValueError("a dataset classifier needs at least one dataset")
        self.num_datasets = num_datasets
        self.normalize = normalize
        self.linear = nn.Linear(embedding_dim, num_datasets)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.linear(F.normalize(embeddings, dim=1) if self.normalize else embeddings)


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
