"""Distillation losses against plain-Python reference implementations (loops over numbers, no torch)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facefleet.nn.distill import (
    calibrated_threshold,
    cosine_matrix,
    cross_pair_verdicts,
    cross_scores,
    decision_loss,
    distillation_losses,
    embedding_distance_loss,
    inspection_scores,
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


def ref_decision(
    scores: list[float], same: list[bool], threshold: float, temperature: float, impostor_share: float = 0.5
) -> float:
    genuine = [ref_logistic(s, True, threshold, temperature) for s, y in zip(scores, same, strict=True) if y]
    impostor = [
        ref_logistic(s, False, threshold, temperature) for s, y in zip(scores, same, strict=True) if not y
    ]
    if not genuine or not impostor:
        part = genuine or impostor
        return sum(part) / len(part)
    return (1 - impostor_share) * sum(genuine) / len(genuine) + impostor_share * sum(impostor) / len(impostor)


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


@pytest.mark.parametrize("share", [0.0, 0.8, 1.0])
def test_decision_loss_impostor_share_matches_the_reference(share: float) -> None:
    rng = np.random.default_rng(5)
    scores = list(rng.uniform(-1, 1, size=11))
    same = [bool(x) for x in rng.integers(0, 2, size=11)]
    same[0], same[1] = True, False
    value = decision_loss(
        torch.tensor(scores), torch.tensor(same), threshold=0.2, temperature=0.2, impostor_share=share
    )
    assert float(value) == pytest.approx(ref_decision(scores, same, 0.2, 0.2, share), rel=1e-5)
    # a kind absent from the batch gives its share to the other, whatever the share
    alone = decision_loss(
        torch.tensor(scores[:1]), torch.tensor([True]), threshold=0.2, temperature=0.2, impostor_share=share
    )
    assert float(alone) == pytest.approx(ref_logistic(scores[0], True, 0.2, 0.2), rel=1e-5)
    with pytest.raises(ValueError, match="impostor_share"):
        decision_loss(
            torch.tensor(scores), torch.tensor(same), threshold=0.2, temperature=0.2, impostor_share=1.5
        )


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


def ref_cross_verdicts(
    claimed: list[int], probe: list[int], device: list[int], genuine: list[bool]
) -> list[list[int]]:
    """Row i (pair i's reference) against column j (pair j's attempt), by the rule in words."""
    out = []
    for i in range(len(claimed)):
        row = []
        for j in range(len(claimed)):
            if i == j:
                row.append(1 if genuine[i] else 0)
            elif probe[j] < 0:  # the inspector did not say who the attempt is
                row.append(-1)
            elif probe[j] == claimed[i]:
                row.append(1)
            elif device[i] == device[j]:
                row.append(0)
            else:
                row.append(-1)
        out.append(row)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cross_pair_verdicts_match_the_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    count = 12
    device = rng.integers(0, 2, count)
    claimed = device * 10 + rng.integers(0, 4, count)  # codes unique per (device, user)
    genuine = rng.random(count) < 0.6
    probe = np.where(genuine, claimed, -1)
    got = cross_pair_verdicts(
        torch.tensor(claimed), torch.tensor(probe), torch.tensor(device), torch.tensor(genuine)
    )
    assert got.dtype == torch.int8
    expected = ref_cross_verdicts(claimed.tolist(), probe.tolist(), device.tolist(), genuine.tolist())
    assert got.tolist() == expected


def test_cross_pairs_add_impostors_only_within_a_terminal() -> None:
    # Terminal 0: users 0 and 1 (genuine attempts), one impostor claiming user 0; terminal 1: user 5
    # (genuine), who may be the same person as a user of terminal 0.
    claimed = torch.tensor([0, 1, 0, 5])
    genuine = torch.tensor([True, True, False, True])
    verdicts = cross_pair_verdicts(
        claimed, torch.where(genuine, claimed, -1), torch.tensor([0, 0, 0, 1]), genuine
    )
    assert verdicts.tolist() == [
        [1, 0, -1, -1],  # user 0's reference: user 1's attempt is someone else; the impostor unknown
        [0, 1, -1, -1],
        [1, 0, 0, -1],  # the impostor pair's reference is user 0's: user 0's own attempt is genuine
        [-1, -1, -1, 1],  # another terminal: unknown
    ]


def test_cross_scores_diagonal_is_the_pair_score() -> None:
    generator = torch.Generator().manual_seed(3)
    references, attempts = torch.randn(5, 8, generator=generator), torch.randn(5, 8, generator=generator)
    matrix = cross_scores(references, attempts)
    torch.testing.assert_close(matrix.diagonal(), pair_scores(references, attempts))
    torch.testing.assert_close(matrix[1, 3], pair_scores(references[1:2], attempts[3:4])[0])


def test_cross_pair_verdicts_refuse_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="one length"):
        cross_pair_verdicts(torch.zeros(3), torch.zeros(3), torch.zeros(2), torch.zeros(3, dtype=torch.bool))


def test_inspection_scores_take_the_pairs_own_or_every_known_cross_pair() -> None:
    generator = torch.Generator().manual_seed(4)
    references, attempts = torch.randn(3, 6, generator=generator), torch.randn(3, 6, generator=generator)
    own, same = inspection_scores(references, attempts, torch.tensor([True, False, True]))
    torch.testing.assert_close(own, pair_scores(references, attempts))
    assert same.tolist() == [True, False, True]
    verdicts = torch.tensor([[1, 0, -1], [-1, 0, -1], [0, -1, 1]], dtype=torch.int8)
    scores, same = inspection_scores(references, attempts, verdicts)
    matrix = cross_scores(references, attempts)
    torch.testing.assert_close(
        scores, torch.stack([matrix[0, 0], matrix[0, 1], matrix[1, 1], matrix[2, 0], matrix[2, 2]])
    )
    assert same.tolist() == [True, False, False, False, True]
