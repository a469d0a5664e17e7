"""The overlap finder's math against a brute-force reference written with plain loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facefleet.nn.overlaps import (
    block_ranges,
    calibrated_cut,
    find_overlaps,
    precision_recall,
    unit_rows,
)


def brute_force(centres: np.ndarray, counts: list[int], rate: float) -> tuple[float, set[tuple[int, int]]]:
    unit = [row / np.linalg.norm(row) for row in centres.astype(np.float64)]
    owner = [k for k, count in enumerate(counts) for _ in range(count)]
    cos = [[float(np.dot(a, b)) for b in unit] for a in unit]
    impostors = [
        max(cos[i][j] for j in range(len(unit)) if j != i and owner[j] == owner[i])
        for i in range(len(unit))
        if counts[owner[i]] > 1
    ]
    # the cut lies just above the highest impostor score that may not be reached
    allowed = math.floor(rate * len(impostors))
    cut = float(np.nextafter(sorted(impostors, reverse=True)[allowed], np.inf))
    pairs = set()
    for i in range(len(unit)):
        for j in range(len(unit)):
            if owner[i] >= owner[j]:
                continue
            in_j = [m for m in range(len(unit)) if owner[m] == owner[j]]
            in_i = [m for m in range(len(unit)) if owner[m] == owner[i]]
            best_j = max(in_j, key=lambda m: (cos[i][m], -m))
            best_i = max(in_i, key=lambda m: (cos[m][j], -m))
            if best_j == j and best_i == i and cos[i][j] >= cut:
                pairs.add((i, j))
    return cut, pairs


@pytest.mark.parametrize("seed", range(6))
def test_find_overlaps_equals_the_brute_force_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    counts = [int(c) for c in rng.integers(3, 9, size=int(rng.integers(2, 5)))]
    people = rng.normal(size=(12, 6))
    # classes are noisy copies of people: some people appear in several datasets
    centres = np.stack([people[rng.integers(12)] + 0.3 * rng.normal(size=6) for _ in range(sum(counts))])
    rate = float(rng.choice([0.01, 0.05, 0.2]))
    result = find_overlaps(torch.from_numpy(centres).float(), counts, false_match_rate=rate)
    cut, pairs = brute_force(centres, counts, rate)
    assert result.threshold == pytest.approx(cut, abs=1e-6)
    assert {(p.first, p.second) for p in result.pairs} == pairs
    assert [p.score for p in result.pairs] == sorted((p.score for p in result.pairs), reverse=True)
    assert result.calibration_classes == sum(counts)
    assert result.calibration_above <= math.floor(rate * result.calibration_classes)


@pytest.mark.parametrize("seed", range(5))
def test_shared_people_are_found_and_distinct_ones_are_not(seed: int) -> None:
    rng = np.random.default_rng(seed)
    people = rng.normal(size=(30, 64))
    # dataset 0: people 0-19, dataset 1: people 10-29 in another order; 10 shared
    order = rng.permutation(20)
    first, second = people[:20], people[10:30][order]
    noise = 0.2
    centres = np.concatenate([first, second]) + noise * rng.normal(size=(40, 64))
    result = find_overlaps(centres, [20, 20], false_match_rate=0.025)
    truth = {(p, 20 + int(np.flatnonzero(order == p - 10)[0])) for p in range(10, 20)}
    precision, recall, correct = precision_recall([(p.first, p.second) for p in result.pairs], truth)
    # seeds 0-4: recall 1.0 each, precision 10/11 on seed 0 (one unshared pair above the cut), else 1.0
    assert recall == 1.0 and correct == 10 and precision >= 0.9
    assert result.calibration_reliable  # 40 classes >= 1/0.025


def test_calibration_says_when_too_few_pairs_measure_the_rate() -> None:
    scores = np.array([0.1, 0.5, 0.3])
    cut, reliable = calibrated_cut(scores, 0.01)
    assert not reliable and cut > 0.5 and cut == pytest.approx(0.5)
    cut, reliable = calibrated_cut(np.linspace(0, 1, 100), 0.01)  # k = 1: the highest may reach it
    assert reliable and 0.98 < cut <= 1.0
    with pytest.raises(ValueError, match="false_match_rate"):
        calibrated_cut(scores, 0.0)


def test_one_dataset_finds_nothing_and_bad_shapes_are_refused() -> None:
    result = find_overlaps(np.eye(4), [4])
    assert result.pairs == [] and result.calibration_classes == 4
    with pytest.raises(ValueError, match="centres for"):
        find_overlaps(np.eye(4), [2, 3])
    with pytest.raises(ValueError, match="at least one class"):
        block_ranges([2, 0])
    assert np.allclose(np.linalg.norm(unit_rows(np.ones((2, 3))), axis=1), 1.0)


def test_precision_recall_edge_cases() -> None:
    assert precision_recall([], [(1, 2)]) == (1.0, 0.0, 0)
    assert precision_recall([(2, 1)], [(1, 2)]) == (1.0, 1.0, 1)  # unordered
    assert precision_recall([(1, 3), (1, 2)], []) == (0.0, 1.0, 0)
