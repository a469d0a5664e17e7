"""verification_metrics on hand-made score sets whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facefleet.nn.verification import cosine_scores, fuse_flip, threshold_at_far, verification_metrics


def test_perfect_separation() -> None:
    rng = np.random.default_rng(0)
    is_same = np.repeat([True, False], 300)
    scores = np.where(is_same, rng.uniform(0.6, 1.0, 600), rng.uniform(-1.0, 0.4, 600))
    order = rng.permutation(600)
    m = verification_metrics(scores[order], is_same[order])
    assert m.accuracy == 1.0 and m.accuracy_std == 0.0 and m.auc == 1.0 and m.eer == 0.0
    assert m.tar_at_far_1e3 == 1.0 and m.tar_at_far_1e4 == 1.0
    assert 0.4 < m.threshold < 0.6
    assert m.roc_fpr[0] == 0.0 and m.roc_tpr[-1] == 1.0 and len(m.roc_fpr) == len(m.roc_tpr) <= 512


def test_distances_with_lower_is_same() -> None:
    is_same = np.array([True] * 50 + [False] * 50)
    distances = np.where(is_same, 0.2, 1.5) + np.linspace(0, 0.1, 100)
    m = verification_metrics(distances, is_same, higher_is_same=False)
    assert m.accuracy == 1.0 and m.auc == 1.0 and 0.3 < m.threshold < 1.5 and not m.higher_is_same


def test_random_scores_are_chance() -> None:
    rng = np.random.default_rng(1)
    is_same = rng.random(20000) < 0.5
    m = verification_metrics(rng.random(20000), is_same)
    assert abs(m.auc - 0.5) < 0.02 and abs(m.eer - 0.5) < 0.02 and abs(m.accuracy - 0.5) < 0.03
    assert m.tar_at_far_1e3 < 0.01


def test_known_eer_and_tar() -> None:
    # 10 same pairs scored 1..10, 10 different pairs scored −1.5..7.5: a hand-countable ROC
    same_scores = np.arange(1, 11, dtype=float)  # 1 … 10
    diff_scores = np.arange(1, 11, dtype=float) - 2.5  # −1.5 … 7.5
    scores = np.r_[same_scores, diff_scores]
    is_same = np.r_[np.ones(10, bool), np.zeros(10, bool)]
    m = verification_metrics(scores, is_same)
    # "same when score >= 4.5": misses same 1-4 (FNR 0.4), accepts different 4.5-7.5 (FPR 0.4)
    assert m.eer == pytest.approx(0.4, abs=1e-9)
    assert m.tar_at_far_1e3 == pytest.approx(0.3)  # 8, 9, 10 above every different score
    # AUC = P(same > diff): count pairs
    wins = (same_scores[:, None] > diff_scores).sum() + 0.5 * (same_scores[:, None] == diff_scores).sum()
    assert m.auc == pytest.approx(wins / 100)


def test_rejects_single_class_and_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="same and one different"):
        verification_metrics([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="labels"):
        verification_metrics([0.1, 0.2], [True])


def test_fuse_flip_and_cosine() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 8))
    images = torch.randn(3, 3, 4, 4)
    fused = fuse_flip(net, images)
    expected = net(images) + net(images.flip(3))
    assert torch.allclose(fused, expected / expected.norm(dim=1, keepdim=True), atol=1e-6)
    assert torch.allclose(cosine_scores(fused, fused), torch.ones(3), atol=1e-6)


def test_operating_point_accepts_at_most_the_requested_share_of_impostors() -> None:
    rng = np.random.default_rng(0)
    impostors, genuine = rng.normal(0.0, 1.0, 1000), rng.normal(2.0, 1.0, 1000)
    scores = np.concatenate([genuine, impostors])
    is_same = np.concatenate([np.ones(1000, bool), np.zeros(1000, bool)])
    threshold, tar = threshold_at_far(scores, is_same, 0.01)
    assert np.mean(impostors >= threshold) <= 0.01
    assert np.mean(impostors >= np.nextafter(threshold, -np.inf) - 1e-9) > 0.01 - 1e-3  # tight, not just safe
    assert tar == np.mean(genuine >= threshold)
    metrics = verification_metrics(scores, is_same, operating_far=0.01)
    assert metrics.threshold_at_operating_far == threshold and metrics.tar_at_operating_far == tar
    distance = verification_metrics(-scores, is_same, higher_is_same=False, operating_far=0.01)
    assert distance.threshold_at_operating_far == -threshold


def _insightface_lfw_accuracy(distances: np.ndarray, is_same: np.ndarray, folds: int = 10) -> float:
    """insightface's eval/verification.py calculate_roc, reduced to its accuracy: KFold(n_splits=10,
    shuffle=False) over the pairs in file order, thresholds np.arange(0, 4, 0.01) on distances, the first
    best threshold of the training folds applied to the test fold."""
    thresholds = np.arange(0, 4, 0.01)
    fold_size = distances.size // folds
    accuracies = []
    for fold in range(folds):
        test = np.zeros(distances.size, dtype=bool)
        test[fold * fold_size : (fold + 1) * fold_size] = True
        train_acc = [np.mean((distances[~test] < t) == is_same[~test]) for t in thresholds]
        best = thresholds[int(np.argmax(train_acc))]
        accuracies.append(np.mean((distances[test] < best) == is_same[test]))
    return float(np.mean(accuracies))


def _lfw_layout(rng: np.random.Generator, folds: int, per_fold: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores of a pairs file in LFW's layout: per fold, ``per_fold`` same then ``per_fold`` different.
    Scores sit on a 0.01 grid offset by 0.005 so no threshold of insightface's grid ties with a score."""
    is_same = np.tile(np.repeat([True, False], per_fold), folds)
    raw = np.where(is_same, rng.normal(0.55, 0.2, is_same.size), rng.normal(0.25, 0.2, is_same.size))
    scores = np.clip(np.floor(raw * 100) / 100 + 0.005, -0.995, 0.995)
    return scores, is_same


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_folds_equal_insightface_lfw_protocol_on_lfw_layout(seed: int) -> None:
    scores, is_same = _lfw_layout(np.random.default_rng(seed), folds=10, per_fold=30)
    ours = verification_metrics(scores, is_same).accuracy
    assert ours == pytest.approx(_insightface_lfw_accuracy(1.0 - scores, is_same), abs=1e-12)


def test_fold_estimate_does_not_depend_on_pair_order() -> None:
    # The same pairs listed "all same, then all different": contiguous cuts of the whole list give folds
    # of one kind only, and each fold's threshold is learned on the wrong mix. Stratified folds do not care.
    scores, is_same = _lfw_layout(np.random.default_rng(3), folds=10, per_fold=30)
    lfw = verification_metrics(scores, is_same).accuracy
    grouped = np.argsort(~is_same, kind="stable")
    assert verification_metrics(scores[grouped], is_same[grouped]).accuracy == pytest.approx(lfw, abs=1e-12)


def test_declared_fold_ids_are_honoured_and_checked() -> None:
    scores, is_same = _lfw_layout(np.random.default_rng(4), folds=10, per_fold=30)
    declared = np.repeat(np.arange(10), 60)
    assert verification_metrics(scores, is_same, fold_ids=declared).accuracy == pytest.approx(
        _insightface_lfw_accuracy(1.0 - scores, is_same), abs=1e-12
    )
    with pytest.raises(ValueError, match="fold_ids"):
        verification_metrics(scores, is_same, fold_ids=np.zeros(scores.size, dtype=int))


def test_operating_point_says_when_too_few_impostor_pairs_measure_the_far() -> None:
    rng = np.random.default_rng(5)
    few = np.r_[np.ones(40, bool), np.zeros(40, bool)]  # 40 impostor pairs < 1 / 0.01
    scores = np.where(few, rng.uniform(0.5, 1.0, 80), rng.uniform(0.0, 0.6, 80))
    m = verification_metrics(scores, few, operating_far=0.01)
    assert not m.operating_point_reliable and m.impostor_pairs == 40
    assert m.threshold_at_operating_far > scores[~few].max()  # the fallback: no impostor accepted
    many = np.r_[np.ones(40, bool), np.zeros(100, bool)]
    m = verification_metrics(rng.uniform(0, 1, 140), many, operating_far=0.01)
    assert m.operating_point_reliable and m.impostor_pairs == 100
