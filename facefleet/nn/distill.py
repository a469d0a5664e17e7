"""Distillation losses (seed 002): a small student learns a big teacher's embeddings (format 1) and the
inspectors' verdicts on the decisions terminals made (format 2). Pure tensor functions, no I/O.

Format 1, on a batch of images embedded by both nets:
  * ``embedding_distance_loss``: mean cosine distance 1 - cos(s_i, t_i) between each image's student and
    teacher embedding (same dimension; a training-only projection bridges different sizes);
  * ``similarity_structure_loss``: mean squared difference between the student's and the teacher's batch
    cosine-similarity matrices (off the diagonal): the student learns how the teacher relates faces to
    each other, which is what a verification decision reads, at any embedding size.
Format 2, on inspected attempt pairs (reference crop, attempt crop, verdict):
  * ``decision_loss``: logistic loss of the student's decision score (cosine of the two crops) against the
    verdict, on the logit ``(score - threshold) / temperature``; ``threshold`` is the teacher card's, so a
    score above it keeps meaning "accept" (genuine) and below it "reject" (impostor).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def embedding_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(student_i, teacher_i) over the batch; both [N, D] (not necessarily normalised)."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"student embeddings {tuple(student.shape)} and teacher embeddings {tuple(teacher.shape)} "
            "differ: "
            "project the student into the teacher's space first"
        )
    return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=1)).mean()


def cosine_matrix(embeddings: torch.Tensor) -> torch.Tensor:
    """[N, N] cosine similarities of a batch of embeddings [N, D]."""
    unit = F.normalize(embeddings.float(), dim=1)
    return unit @ unit.T


def similarity_structure_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the two batch cosine matrices over the N*(N-1) off-diagonal entries.

    The diagonal (always 1) carries nothing; the dimensions of student [N, Ds] and teacher [N, Dt] may differ.
    """
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"batch sizes differ: student {student.shape[0]}, teacher {teacher.shape[0]}")
    n = student.shape[0]
    if n < 2:
        return student.float().sum() * 0.0
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=student.device)
    difference = cosine_matrix(student) - cosine_matrix(teacher.detach())
    return difference[off_diagonal].pow(2).mean()


def decision_logits(scores: torch.Tensor, threshold: float, temperature: float) -> torch.Tensor:
    """The calibrated decision: positive means accept at ``threshold``; ``temperature`` sets its sharpness."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return (scores - threshold) / temperature


def decision_loss(
    scores: torch.Tensor,
    is_same: torch.Tensor,
    *,
    threshold: float,
    temperature: float,
    balanced: bool = True,
) -> torch.Tensor:
    """Logistic loss of decision scores [P] against verdicts [P] (True = genuine).

    ``balanced``: genuine and impostor pairs each weigh half (inspection sets are mostly one kind, e.g.
    only the rejections a terminal reported); a kind absent from the batch gives its half to the other.
    """
    target = is_same.to(scores.dtype)
    losses = F.binary_cross_entropy_with_logits(
        decision_logits(scores.float(), threshold, temperature), target.float(), reduction="none"
    )
    if not balanced:
        return losses.mean()
    genuine, impostor = is_same.bool(), ~is_same.bool()
    parts = [losses[mask].mean() for mask in (genuine, impostor) if bool(mask.any())]
    if not parts:
        return scores.float().sum() * 0.0
    return torch.stack(parts).mean()


def pair_scores(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Cosine of each (left_i, right_i) embedding pair: the terminal's decision score."""
    return F.cosine_similarity(left.float(), right.float(), dim=1)


def distillation_losses(
    student: torch.Tensor,
    teacher: torch.Tensor,
    *,
    embedding_weight: float = 1.0,
    similarity_weight: float = 1.0,
    projected_student: torch.Tensor | None = None,
    inspection_scores: torch.Tensor | None = None,
    inspection_same: torch.Tensor | None = None,
    threshold: float = 0.0,
    temperature: float = 0.05,
    inspection_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """The named losses of one step; ``loss`` is their weighted sum.

    ``projected_student`` is the student's embedding in the teacher's space (for the cosine distance when
    the sizes differ; default: ``student`` itself). Without inspection pairs format 2 is left out.
    """
    distance = embedding_distance_loss(student if projected_student is None else projected_student, teacher)
    structure = similarity_structure_loss(student, teacher)
    losses = {"embedding_loss": distance, "similarity_loss": structure}
    total = embedding_weight * distance + similarity_weight * structure
    if inspection_scores is not None and inspection_same is not None and inspection_scores.numel():
        decision = decision_loss(
            inspection_scores, inspection_same, threshold=threshold, temperature=temperature
        )
        losses["inspection_loss"] = decision
        total = total + inspection_weight * decision
    losses["loss"] = total
    return losses
