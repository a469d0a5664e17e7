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
    verdict, on the logit ``(score - threshold) / temperature``, so a score above the threshold keeps
    meaning "accept" (genuine) and below it "reject" (impostor). Which threshold:
  * ``calibrated_threshold`` (calibration ``batch``): the student's own counterpart of the teacher card's
    threshold on the current training batch: the score at the same rank among the batch's cross-image
    cosine scores as the teacher's threshold among the teacher's. The card is re-evaluated on the student
    (at operating_far), so a fixed teacher threshold is not the student's: pulling inspected genuine
    scores above it inflates every score and moves the student's own threshold up with them. The batch
    threshold keeps its gradient, so the same loss pushes the batch's highest cross-image (mostly
    impostor) scores down while it pulls inspected genuine pairs above them;
  * the teacher card's threshold itself (calibration ``teacher``).
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


def calibrated_threshold(
    student: torch.Tensor, teacher: torch.Tensor, teacher_threshold: float
) -> torch.Tensor:
    """The student's decision threshold matching ``teacher_threshold`` on one batch (both [N, D*]).

    ``share`` = the fraction of the batch's N*(N-1)/2 cross-image pairs the teacher scores at or above its
    threshold; the result is the student's (1 - share) quantile of its own cross-image scores: both nets
    accept the same share of the batch's pairs (on a training batch, nearly all impostors). Differentiable
    in ``student`` (the teacher is detached).
    """
    n = student.shape[0]
    if n < 2 or teacher.shape[0] != n:
        raise ValueError(f"need one batch of >= 2 images for both nets, got {n} and {teacher.shape[0]}")
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=student.device), diagonal=1)
    student_scores = cosine_matrix(student)[upper]
    with torch.no_grad():
        share = (cosine_matrix(teacher.detach())[upper] >= teacher_threshold).float().mean()
    return torch.quantile(student_scores, (1.0 - share).clamp(0.0, 1.0).to(student_scores.dtype))


def decision_logits(
    scores: torch.Tensor, threshold: float | torch.Tensor, temperature: float
) -> torch.Tensor:
    """The calibrated decision: positive means accept at ``threshold``; ``temperature`` sets its sharpness."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return (scores - threshold) / temperature


def decision_loss(
    scores: torch.Tensor,
    is_same: torch.Tensor,
    *,
    threshold: float | torch.Tensor,
    temperature: float,
    balanced: bool = True,
    impostor_share: float = 0.5,
) -> torch.Tensor:
    """Logistic loss of decision scores [P] against verdicts [P] (True = genuine).

    ``balanced``: genuine and impostor pairs weigh ``1 - impostor_share`` and ``impostor_share`` of the
    loss (inspection sets are mostly one kind, e.g. only the rejections a terminal reported); a kind absent
    from the batch gives its share to the other.
    """
    if not 0.0 <= impostor_share <= 1.0:
        raise ValueError(f"impostor_share must lie in [0, 1], got {impostor_share}")
    genuine, impostor = is_same.bool(), ~is_same.bool()
    losses = F.binary_cross_entropy_with_logits(
        decision_logits(scores.float(), threshold, temperature), genuine.float(), reduction="none"
    )
    if not balanced:
        return losses.mean()
    parts = [
        (share, losses[mask].mean())
        for share, mask in ((1.0 - impostor_share, genuine), (impostor_share, impostor))
        if bool(mask.any())
    ]
    if not parts:
        return scores.float().sum() * 0.0
    if len(parts) == 1:
        return parts[0][1]
    return sum(share * loss for share, loss in parts)  # type: ignore[return-value]


def cross_pair_verdicts(
    claimed: torch.Tensor, probe: torch.Tensor, device: torch.Tensor, genuine: torch.Tensor
) -> torch.Tensor:
    """Every reference of a batch of inspected pairs against every attempt of it: [P, P] int8, 1 genuine,
    0 impostor, -1 unknown (row i: pair i's reference, column j: pair j's attempt).

    ``claimed`` [P]: the enrolled user each pair claims (an integer code, unique per device and user);
    ``probe`` [P]: who the attempt shows, as far as the inspector said: the claimed user's code when the
    verdict was genuine, -1 otherwise (an impostor's identity is unknown); ``device`` [P]: the terminal's
    code; ``genuine`` [P]: the verdicts. The diagonal is the verdicts themselves. Off it, an attempt an
    inspector confirmed as user v is a genuine pair for every reference of v and an impostor pair for the
    reference of any other user enrolled on the same terminal (two users of one terminal are two people);
    across terminals the same person may be enrolled twice, so those pairs stay unknown.
    """
    sizes = {int(t.shape[0]) for t in (claimed, probe, device, genuine)}
    if len(sizes) != 1 or any(t.ndim != 1 for t in (claimed, probe, device, genuine)):
        raise ValueError("claimed, probe, device and genuine must be [P] tensors of one length")
    identified = probe[None, :] >= 0
    same_user = claimed[:, None] == probe[None, :]
    same_device = device[:, None] == device[None, :]
    verdicts = torch.full(same_user.shape, -1, dtype=torch.int8, device=claimed.device)
    verdicts[identified & same_user] = 1
    verdicts[identified & ~same_user & same_device] = 0
    verdicts.diagonal().copy_(genuine.to(torch.int8))
    return verdicts


def cross_scores(references: torch.Tensor, attempts: torch.Tensor) -> torch.Tensor:
    """[P, P] cosines of every reference [P, D] against every attempt [P, D] (diagonal: ``pair_scores``)."""
    return F.normalize(references.float(), dim=1) @ F.normalize(attempts.float(), dim=1).T


def inspection_scores(
    references: torch.Tensor, attempts: torch.Tensor, verdicts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Format 2's (scores, is_same) of a batch of inspected pairs: with ``verdicts`` [P] (bool) each pair's
    own score; with a [P, P] ``cross_pair_verdicts`` matrix every known reference-attempt score."""
    if verdicts.ndim == 1:
        return pair_scores(references, attempts), verdicts.bool()
    verdicts = verdicts.to(references.device)
    known = verdicts >= 0
    return cross_scores(references, attempts)[known], verdicts[known] == 1


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
    calibration: str = "teacher",
    impostor_share: float = 0.5,
) -> dict[str, torch.Tensor]:
    """The named losses of one step; ``loss`` is their weighted sum.

    ``projected_student`` is the student's embedding in the teacher's space (for the cosine distance when
    the sizes differ; default: ``student`` itself). Without inspection pairs format 2 is left out.
    ``threshold`` is the teacher card's; ``calibration``: ``teacher`` decides format 2 at it, ``batch`` at
    its counterpart on this batch of the student's scores (``calibrated_threshold``; reported as
    ``decision_threshold``).
    """
    if calibration not in ("teacher", "batch"):
        raise ValueError(f"calibration must be 'teacher' or 'batch', got {calibration!r}")
    distance = embedding_distance_loss(student if projected_student is None else projected_student, teacher)
    structure = similarity_structure_loss(student, teacher)
    losses = {"embedding_loss": distance, "similarity_loss": structure}
    total = embedding_weight * distance + similarity_weight * structure
    if inspection_scores is not None and inspection_same is not None and inspection_scores.numel():
        at: float | torch.Tensor = threshold
        if calibration == "batch" and student.shape[0] >= 2:
            at = calibrated_threshold(student, teacher, threshold)
            losses["decision_threshold"] = at.detach()
        decision = decision_loss(
            inspection_scores,
            inspection_same,
            threshold=at,
            temperature=temperature,
            impostor_share=impostor_share,
        )
        losses["inspection_loss"] = decision
        total = total + inspection_weight * decision
    losses["loss"] = total
    return losses
