"""10-fold accuracy on a pairs file's declared folds equals insightface's LFW protocol on the same scores.

The reference below is insightface's ``calculate_roc`` (recognition/eval/verification.py) restated with
numpy: squared distances of unit embeddings, thresholds ``np.arange(0, 4, 0.01)``, ``KFold(n_splits=10,
shuffle=False)`` over the file order, per fold the training folds' best-accuracy threshold (first one on
ties) scored on the held-out fold; the reported accuracy is the mean (and std) over folds.
"""

from __future__ import annotations

import numpy as np
import pytest

from facefleet.nn.verification import verification_metrics


def kfold_splits(n: int, n_splits: int) -> list[np.ndarray]:
    """sklearn's KFold(n_splits, shuffle=False) test indices: contiguous, the first n % k folds one longer."""
    sizes = np.full(n_splits, n // n_splits)
    sizes[: n % n_splits] += 1
    bounds = np.r_[0, np.cumsum(sizes)]
    return [np.arange(bounds[i], bounds[i + 1]) for i in range(n_splits)]


def insightface_accuracy(dist: np.ndarray, issame: np.ndarray, folds: int = 10) -> tuple[float, float]:
    thresholds = np.arange(0, 4, 0.01)

    def accuracy(threshold: float, d: np.ndarray, same: np.ndarray) -> float:
        predict = np.less(d, threshold)
        tp = np.sum(predict & same)
        tn = np.sum(~predict & ~same)
        return float(tp + tn) / d.size

    accuracies = []
    for test in kfold_splits(dist.size, folds):
        train = np.setdiff1d(np.arange(dist.size), test)
        acc_train = [accuracy(t, dist[train], issame[train]) for t in thresholds]
        best = thresholds[int(np.argmax(acc_train))]
        accuracies.append(accuracy(best, dist[test], issame[test]))
    return float(np.mean(accuracies)), float(np.std(accuracies))


def lfw_layout(
    rng: np.random.Generator, per_class: int = 300, folds: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """(cosine scores, is_same) in the order of an LFW pairs file: per fold, per_class same then different.

    Squared distances 2 - 2 cos sit on the midpoints of insightface's 0.01 grid (0.005, 0.015, ...), so
    every split of the sorted scores is one of its thresholds and both searches see the same candidates.
    The separation differs from fold to fold, so the per-fold thresholds differ."""
    scores, same = [], []
    for _fold in range(folds):
        shift = 0.15 * rng.standard_normal()
        genuine = np.clip(rng.normal(1.0 + shift, 0.35, per_class), 0.005, 3.995)
        impostor = np.clip(rng.normal(1.9 + shift, 0.35, per_class), 0.005, 3.995)
        for distances, flag in ((genuine, True), (impostor, False)):
            snapped = np.floor(distances / 0.01) * 0.01 + 0.005
            scores.append(1.0 - snapped / 2.0)
            same.append(np.full(per_class, flag))
    return np.concatenate(scores), np.concatenate(same)


@pytest.mark.parametrize("seed", range(3))
def test_declared_folds_give_insightface_lfw_accuracy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores, same = lfw_layout(rng)
    declared = np.arange(scores.size) // 600  # what read_pairs_file reads from the header "10 300"
    ours = verification_metrics(scores, same, fold_ids=declared)
    reference, reference_std = insightface_accuracy(2.0 - 2.0 * scores, same)
    assert ours.accuracy == pytest.approx(reference, abs=1e-12)
    assert ours.accuracy_std == pytest.approx(reference_std, abs=1e-12)


def test_declared_folds_are_the_file_blocks_even_when_a_block_is_not_half_same() -> None:
    """Blocks of 600 lines whose same/different mix varies (270-330 same pairs): the declared folds are
    the blocks, as insightface's KFold over the file order cuts them; the stratified folds (what a file
    without a header gets) would cut the two kinds evenly instead and differ."""
    rng = np.random.default_rng(7)
    scores, same = lfw_layout(rng)
    order = []
    for fold in range(10):
        extra = int(rng.integers(-30, 31))  # this block takes `extra` same pairs from the next one's share
        block_same = np.flatnonzero(same)[fold * 300 : (fold + 1) * 300]
        block_diff = np.flatnonzero(~same)[fold * 300 : (fold + 1) * 300]
        order.append((block_same, block_diff, extra))
    same_pool = np.concatenate([b for b, _, _ in order])
    diff_pool = np.concatenate([d for _, d, _ in order])
    lines, s_at, d_at = [], 0, 0
    for fold, (_, _, extra) in enumerate(order):
        n_same = 300 + (extra if fold < 9 else 0)
        n_same = min(n_same, same_pool.size - s_at) if fold < 9 else same_pool.size - s_at
        n_diff = 600 - n_same
        lines.append(np.concatenate([same_pool[s_at : s_at + n_same], diff_pool[d_at : d_at + n_diff]]))
        s_at, d_at = s_at + n_same, d_at + n_diff
    file_order = np.concatenate(lines)
    assert file_order.size == 6000 and np.unique(file_order).size == 6000
    file_scores, file_same = scores[file_order], same[file_order]
    declared = np.arange(6000) // 600
    ours = verification_metrics(file_scores, file_same, fold_ids=declared)
    reference, reference_std = insightface_accuracy(2.0 - 2.0 * file_scores, file_same)
    assert ours.accuracy == pytest.approx(reference, abs=1e-12)
    assert ours.accuracy_std == pytest.approx(reference_std, abs=1e-12)
    stratified = verification_metrics(file_scores, file_same)
    assert stratified.accuracy != pytest.approx(reference, abs=1e-12)
