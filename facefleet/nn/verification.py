"""Face verification metrics: 10-fold accuracy, ROC AUC, EER, TAR at fixed FAR, flip-fused embeddings."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

ArrayLike = torch.Tensor | np.ndarray | Sequence[float] | Sequence[bool]
MAX_ROC_POINTS = 512


class VerificationMetrics(BaseModel):
    """Results on one verification set. A pair is predicted "same" when its score >= threshold
    (higher_is_same) or <= threshold (otherwise); `threshold` is the best one on all pairs."""

    num_pairs: int
    accuracy: float = Field(description="mean 10-fold accuracy, each fold's threshold chosen on the other 9")
    accuracy_std: float
    auc: float
    eer: float
    tar_at_far_1e3: float
    tar_at_far_1e4: float
    threshold: float
    higher_is_same: bool
    operating_far: float = Field(default=0.01, description="the false-accept rate of the operating point")
    threshold_at_operating_far: float = Field(
        default=0.0, description="threshold whose false-accept rate on these pairs is <= operating_far"
    )
    tar_at_operating_far: float = 0.0
    impostor_pairs: int = Field(default=0, description="different pairs the operating point was measured on")
    operating_point_reliable: bool = Field(
        default=True,
        description="False when there are fewer than 1/operating_far different pairs: so small a FAR cannot "
        "be measured, and the threshold falls back to just above the highest impostor score (no impostor "
        "of this set accepted)",
    )
    roc_fpr: list[float] = Field(description=f"ROC points for plotting (at most {MAX_ROC_POINTS})")
    roc_tpr: list[float]


def _as_numpy(values: ArrayLike, dtype: type) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype).reshape(-1)


def roc_curve(scores: np.ndarray, is_same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) of "same when score >= t" over every distinct score, from (0, 0) to (1, 1)."""
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_same = scores[order], is_same[order]
    last_of_tie = np.r_[np.nonzero(np.diff(sorted_scores))[0], sorted_scores.size - 1]
    true_pos = np.cumsum(sorted_same)[last_of_tie]
    false_pos = (last_of_tie + 1) - true_pos
    tpr = np.r_[0.0, true_pos / max(1, is_same.sum())]
    fpr = np.r_[0.0, false_pos / max(1, (~is_same).sum())]
    thresholds = np.r_[np.inf, sorted_scores[last_of_tie]]
    return fpr, tpr, thresholds


def _equal_error_rate(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Where FPR = FNR, linearly interpolated between the two ROC points that bracket it."""
    fnr = 1.0 - tpr
    gap = fpr - fnr  # rises from −1 to +1 along the curve
    crossing = int(np.argmax(gap >= 0))
    if crossing == 0:
        return float(fpr[0])
    g0, g1 = gap[crossing - 1], gap[crossing]
    weight = 0.0 if g1 == g0 else -g0 / (g1 - g0)
    return float(fpr[crossing - 1] + weight * (fpr[crossing] - fpr[crossing - 1]))


def _tar_at_far(fpr: np.ndarray, tpr: np.ndarray, far: float) -> float:
    return float(tpr[fpr <= far].max())


def best_threshold(scores: np.ndarray, is_same: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy) maximising the accuracy of "same when score >= threshold" on these pairs;
    the threshold is the midpoint between adjacent distinct scores."""
    fpr, tpr, thresholds = roc_curve(scores, is_same)
    positives, negatives = int(is_same.sum()), int((~is_same).sum())
    accuracy = (tpr * positives + (1.0 - fpr) * negatives) / scores.size
    best = int(np.argmax(accuracy))
    distinct = np.unique(scores)[::-1]  # descending, aligned with thresholds[1:]
    if best == 0:
        threshold = float(distinct[0]) + 1.0
    elif best == len(distinct):
        threshold = float(distinct[-1]) - 1.0
    else:
        threshold = float((distinct[best - 1] + distinct[best]) / 2.0)
    return threshold, float(accuracy[best])


def stratified_folds(is_same: np.ndarray, folds: int) -> np.ndarray:
    """Fold index per pair: same pairs and different pairs are each cut into ``folds`` contiguous runs, in
    file order. On a file in LFW's layout (per fold: n same lines, then n different lines) these are
    exactly the folds the file declares; on any other order every fold still holds both kinds of pair,
    which contiguous cuts of the whole list do not (a fold of only same pairs trains its threshold on
    the wrong mix and the estimate drops)."""
    fold_of = np.empty(is_same.size, dtype=np.int64)
    for kind in (True, False):
        members = np.flatnonzero(is_same == kind)
        fold_of[members] = np.arange(members.size) * folds // max(1, members.size)
    return fold_of


def _kfold_accuracy(scores: np.ndarray, is_same: np.ndarray, fold_of: np.ndarray) -> tuple[float, float]:
    """Threshold from the other folds, accuracy on the held-out one (the LFW protocol)."""
    accuracies = []
    for fold in np.unique(fold_of):
        test = fold_of == fold
        threshold, _ = best_threshold(scores[~test], is_same[~test])
        accuracies.append(float(((scores[test] >= threshold) == is_same[test]).mean()))
    return float(np.mean(accuracies)), float(np.std(accuracies))


def _subsample_roc(fpr: np.ndarray, tpr: np.ndarray) -> tuple[list[float], list[float]]:
    if fpr.size <= MAX_ROC_POINTS:
        return fpr.tolist(), tpr.tolist()
    keep = np.unique(np.linspace(0, fpr.size - 1, MAX_ROC_POINTS).round().astype(int))
    return fpr[keep].tolist(), tpr[keep].tolist()


def threshold_at_far(oriented: np.ndarray, is_same: np.ndarray, far: float) -> tuple[float, float]:
    """(threshold, TAR) of the operating point accepting at most ``far`` of the different pairs.

    Scores are oriented (higher = same) and a pair is accepted when score >= threshold. The threshold sits
    just above the (k+1)-th highest different-pair score, k = floor(far * number of different pairs).
    With fewer than 1/far different pairs, k = 0: the stated fallback is "no impostor of this set accepted".
    """
    negatives = np.sort(oriented[~is_same])[::-1]
    allowed = int(np.floor(far * negatives.size))
    threshold = float(np.nextafter(negatives[allowed], np.inf)) if allowed < negatives.size else -np.inf
    return threshold, float(np.mean(oriented[is_same] >= threshold))


def verification_metrics(
    scores: ArrayLike,
    is_same: ArrayLike,
    *,
    higher_is_same: bool = True,
    folds: int = 10,
    fold_ids: ArrayLike | None = None,
    operating_far: float = 0.01,
) -> VerificationMetrics:
    """Metrics of pair scores (e.g. cosine similarities) against same/different labels.

    accuracy ± accuracy_std: `folds`-fold accuracy, each fold's threshold chosen on the rest; the folds are
    ``fold_ids`` when given (e.g. declared by a pairs file), else stratified (see ``stratified_folds``:
    LFW's own folds on a file in LFW's layout; fewer folds when a kind of pair has fewer members);
    auc; eer; TAR at FAR 1e-3 / 1e-4 (the largest
    TPR with FPR <= FAR: with fewer than 1/FAR different pairs this is the TPR at FPR 0); threshold: the
    best on all pairs, in the caller's score units; threshold_at_operating_far / tar_at_operating_far: the
    operating point for authentication (false accepts <= operating_far on these pairs).
    Set higher_is_same=False for distances.
    Needs at least one same and one different pair.
    """
    score_arr = _as_numpy(scores, np.float64)
    same_arr = _as_numpy(is_same, bool)
    if score_arr.size != same_arr.size:
        raise ValueError(f"{score_arr.size} scores but {same_arr.size} same/different labels")
    if not same_arr.any() or same_arr.all():
        raise ValueError("verification metrics need at least one same and one different pair")
    if not np.isfinite(score_arr).all():
        raise ValueError("verification scores must be finite")
    oriented = score_arr if higher_is_same else -score_arr
    fpr, tpr, _ = roc_curve(oriented, same_arr)
    if fold_ids is None:
        smaller_kind = int(min(same_arr.sum(), (~same_arr).sum()))
        fold_of = stratified_folds(same_arr, max(2, min(folds, smaller_kind)))
    else:
        fold_of = _as_numpy(fold_ids, np.int64)
        if fold_of.size != score_arr.size or np.unique(fold_of).size < 2:
            raise ValueError("fold_ids must give every pair a fold, with at least two folds")
    accuracy, accuracy_std = _kfold_accuracy(oriented, same_arr, fold_of)
    threshold, _ = best_threshold(oriented, same_arr)
    roc_fpr, roc_tpr = _subsample_roc(fpr, tpr)
    far_threshold, far_tar = threshold_at_far(oriented, same_arr, operating_far)
    return VerificationMetrics(
        num_pairs=int(score_arr.size),
        accuracy=accuracy,
        accuracy_std=accuracy_std,
        auc=float(np.trapezoid(tpr, fpr)),
        eer=_equal_error_rate(fpr, tpr),
        tar_at_far_1e3=_tar_at_far(fpr, tpr, 1e-3),
        tar_at_far_1e4=_tar_at_far(fpr, tpr, 1e-4),
        threshold=threshold if higher_is_same else -threshold,
        higher_is_same=higher_is_same,
        operating_far=operating_far,
        threshold_at_operating_far=far_threshold if higher_is_same else -far_threshold,
        tar_at_operating_far=far_tar,
        impostor_pairs=int((~same_arr).sum()),
        operating_point_reliable=bool((~same_arr).sum() >= math.ceil(1.0 / operating_far - 1e-9)),
        roc_fpr=roc_fpr,
        roc_tpr=roc_tpr,
    )


def fuse_flip(embed_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """L2-normalised sum of the embeddings of images [N, 3, H, W] and of their horizontal flips."""
    fused = embed_fn(images) + embed_fn(torch.flip(images, dims=[3]))
    return F.normalize(fused, dim=1)


def cosine_scores(embeddings_a: torch.Tensor, embeddings_b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of two [P, D] embedding tensors."""
    return F.cosine_similarity(embeddings_a, embeddings_b, dim=1)
