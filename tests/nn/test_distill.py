"""Distillation losses against plain-Python reference implementations (loops over numbers, no torch)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facefleet.nn.distill import (
    calibrated_threshold,
    cosine_matrix,
    decision_loss,
    distillation_losses,
    embedding_distance_loss,
    pair_scores,
    similarity_structure_loss,
)


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def ref_distance(student: np.ndarray, teacher: np.ndarray) -> float:
    return sum(1 - _cos(list(s), list(t)) for s, t in zip(student, teacher, strict=True)) / len(student)


def ref_structure(student: np.ndarray, teacher: np.ndarray) -> float:
    n, total = len(student), 0.0
    for i in range(n):
        for j in range(n):
            if i != j:
                total += (
                    _cos(list(student[i]), list(student[j])) - _cos(list(teacher[i]), list(teacher[j]))
                ) ** 2
    return total / (n * (n - 1))


def ref_logistic(score: float, same: bool, threshold: float, temperature: float) -> float:
    z = (score - threshold) / temperature
    p = 1 / (1 + math.exp(-z))
    return -math.log(p) if same else -math.log(1 - p)


def ref_decision(scores: list[float], same: list[bool], threshold: float, temperature: float) -> float:
    genuine = [ref_logistic(s, True, threshold, temperature) for s, y in zip(scores, same, strict=True) if y]
    impostor = [
        ref_logistic(s, False, threshold, temperature) for s, y in zip(scores, same, strict=True) if not y
    ]
    parts = [sum(p) / len(p) for p in (genuine, impostor) if p]
    return sum(parts) / len(parts)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_format_one_losses_match_the_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    student, teacher = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
    s, t = torch.tensor(student), torch.tensor(teacher)
    assert float(embedding_distance_loss(s, t)) == pytest.approx(ref_distance(student, teacher), abs=1e-5)
    assert float(similarity_structure_loss(s, t)) == pytest.approx(ref_structure(student, teacher), abs=1e-5)


def test_structure_loss_works_across_embedding_sizes_and_ignores_scale() -> None:
    rng = np.random.default_rng(4)
    student, teacher = rng.normal(size=(6, 3)), rng.normal(size=(6, 9))
    value = float(similarity_structure_loss(torch.tensor(student), torch.tensor(teacher)))
    assert value == pytest.approx(ref_structure(student, teacher), abs=1e-5)
    t = torch.tensor(teacher)
    assert float(similarity_structure_loss(3.0 * t, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(embedding_distance_loss(2.0 * t, t)) == pytest.approx(0.0, abs=1e-6)


def test_distance_loss_refuses_different_sizes() -> None:
    with pytest.raises(ValueError, match="project the student"):
        embedding_distance_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_structure_loss_sends_no_gradient_to_the_teacher() -> None:
    student = torch.randn(5, 4, requires_grad=True)
    teacher = torch.randn(5, 4, requires_grad=True)
    similarity_structure_loss(student, teacher).backward()
    assert student.grad is not None and teacher.grad is None


@pytest.mark.parametrize("seed", [0, 1])
def test_decision_loss_matches_the_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = list(rng.uniform(-1, 1, size=9))
    same = [bool(x) for x in rng.integers(0, 2, size=9)]
    same[0], same[1] = True, False
    value = decision_loss(torch.tensor(scores), torch.tensor(same), threshold=0.3, temperature=0.1)
    assert float(value) == pytest.approx(ref_decision(scores, same, 0.3, 0.1), rel=1e-5)
    unbalanced = decision_loss(
        torch.tensor(scores), torch.tensor(same), threshold=0.3, temperature=0.1, balanced=False
    )
    plain = sum(ref_logistic(s, y, 0.3, 0.1) for s, y in zip(scores, same, strict=True)) / len(scores)
    assert float(unbalanced) == pytest.approx(plain, rel=1e-5)


def test_decision_loss_keeps_the_threshold_meaning() -> None:
    """At the threshold the decision is undecided (log 2); genuine above / impostor below costs little."""
    at = decision_loss(torch.tensor([0.4]), torch.tensor([True]), threshold=0.4, temperature=0.05)
    assert float(at) == pytest.approx(math.log(2), rel=1e-6)
    right = decision_loss(
        torch.tensor([0.6, 0.2]), torch.tensor([True, False]), threshold=0.4, temperature=0.05
    )
    wrong = decision_loss(
        torch.tensor([0.2, 0.6]), torch.tensor([True, False]), threshold=0.4, temperature=0.05
    )
    assert float(right) < 0.02 < 3.0 < float(wrong)
    only_genuine = decision_loss(torch.tensor([0.5]), torch.tensor([True]), threshold=0.4, temperature=0.1)
    assert float(only_genuine) == pytest.approx(ref_logistic(0.5, True, 0.4, 0.1), rel=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        decision_loss(torch.tensor([0.5]), torch.tensor([True]), threshold=0.4, temperature=0.0)


def test_decision_gradient_pushes_genuine_scores_up() -> None:
    left = torch.randn(4, 8)
    right = torch.randn(4, 8, requires_grad=True)
    loss = decision_loss(
        pair_scores(left, right), torch.ones(4, dtype=torch.bool), threshold=0.9, temperature=0.1
    )
    loss.backward()
    assert right.grad is not None
    with torch.no_grad():
        moved = pair_scores(left, right - 0.1 * right.grad)
    assert bool((moved > pair_scores(left, right)).all())


def test_distillation_losses_weighted_sum() -> None:
    rng = np.random.default_rng(7)
    student, teacher = torch.tensor(rng.normal(size=(6, 4))), torch.tensor(rng.normal(size=(6, 4)))
    scores, same = torch.tensor([0.1, 0.8, 0.5]), torch.tensor([False, True, True])
    out = distillation_losses(
        student,
        teacher,
        embedding_weight=2.0,
        similarity_weight=3.0,
        inspection_scores=scores,
        inspection_same=same,
        threshold=0.4,
        temperature=0.1,
        inspection_weight=0.5,
    )
    expected = (
        2.0 * ref_distance(student.numpy(), teacher.numpy())
        + 3.0 * ref_structure(student.numpy(), teacher.numpy())
        + 0.5 * ref_decision([0.1, 0.8, 0.5], [False, True, True], 0.4, 0.1)
    )
    assert float(out["loss"]) == pytest.approx(expected, rel=1e-5)
    plain = distillation_losses(student, teacher)
    assert "inspection_loss" not in plain
    assert float(plain["loss"]) == pytest.approx(float(plain["embedding_loss"] + plain["similarity_loss"]))


def ref_calibrated(student: np.ndarray, teacher: np.ndarray, threshold: float) -> float:
    """The student's score at the teacher threshold's rank among the batch's cross-image pairs."""
    n = len(student)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    s = sorted(_cos(list(student[i]), list(student[j])) for i, j in pairs)
    share = sum(_cos(list(teacher[i]), list(teacher[j])) >= threshold for i, j in pairs) / len(pairs)
    position = (1 - share) * (len(s) - 1)  # linear interpolation, as numpy's default quantile
    low = math.floor(position)
    high = min(low + 1, len(s) - 1)
    return s[low] + (s[high] - s[low]) * (position - low)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibrated_threshold_matches_the_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    student, teacher = rng.normal(size=(9, 4)), rng.normal(size=(9, 6))
    value = calibrated_threshold(torch.tensor(student), torch.tensor(teacher), 0.3)
    assert float(value) == pytest.approx(ref_calibrated(student, teacher, 0.3), abs=1e-5)


def test_calibrated_threshold_follows_the_students_scale() -> None:
    """A student whose scores are the teacher's shifted up gets a threshold shifted up: the share of the
    batch's pairs accepted stays the teacher's, whatever the student's score scale."""
    teacher = torch.randn(12, 8)
    teacher_cos = cosine_matrix(teacher)
    upper = torch.triu(torch.ones(12, 12, dtype=torch.bool), diagonal=1)
    threshold = float(teacher_cos[upper].quantile(0.9))
    same_geometry = calibrated_threshold(teacher.clone(), teacher, threshold)
    assert float(same_geometry) == pytest.approx(threshold, abs=0.05)
    shifted = torch.cat([teacher, 3.0 * torch.ones(12, 1)], dim=1)  # every cosine closer to 1
    assert float(calibrated_threshold(shifted, teacher, threshold)) > threshold + 0.1
    with pytest.raises(ValueError, match="batch"):
        calibrated_threshold(torch.randn(1, 4), torch.randn(1, 4), 0.5)


def test_batch_calibration_pushes_the_batchs_high_scores_down() -> None:
    """Format 2 at the batch threshold sends gradient to the student's training embeddings too: raising a
    genuine inspected score is matched by lowering the cross-image scores that set the threshold."""
    torch.manual_seed(0)
    student = torch.randn(10, 6, requires_grad=True)
    teacher = torch.randn(10, 6)
    left, right = torch.randn(4, 6), torch.randn(4, 6, requires_grad=True)
    out = distillation_losses(
        student,
        teacher,
        embedding_weight=0.0,
        similarity_weight=0.0,
        inspection_scores=pair_scores(left, right),
        inspection_same=torch.tensor([True, True, False, False]),
        threshold=0.2,
        temperature=0.1,
        inspection_weight=1.0,
        calibration="batch",
    )
    out["loss"].backward()
    assert student.grad is not None and float(student.grad.abs().sum()) > 0
    assert "decision_threshold" in out
    expected = calibrated_threshold(student.detach(), teacher, 0.2)
    assert float(out["decision_threshold"]) == pytest.approx(float(expected), abs=1e-6)
    with torch.no_grad():
        before = calibrated_threshold(student, teacher, 0.2)
        after = calibrated_threshold(student - 0.05 * student.grad, teacher, 0.2)
    assert float(after) < float(before)
    teacher_mode = distillation_losses(
        student.detach(),
        teacher,
        inspection_scores=torch.tensor([0.5]),
        inspection_same=torch.tensor([True]),
        threshold=0.2,
        temperature=0.1,
        inspection_weight=1.0,
    )
    assert "decision_threshold" not in teacher_mode
    with pytest.raises(ValueError, match="calibration"):
        distillation_losses(student, teacher, calibration="median")
