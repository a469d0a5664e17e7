"""Which identities of different datasets are probably one person: mutual nearest class centres across
dataset blocks, above a similarity cut calibrated on pairs that are different people by construction.

Rule (``find_overlaps``):
1. Centres: one unit vector per global class (a row per class, datasets in consecutive blocks as in the
   run's label space), e.g. the mean flip-fused embedding of a class's training images, or the identity
   head's weight rows.
2. Calibration: within one dataset, two different labels are two different people. So each class's
   most similar *other* class of its own dataset is the best match a person who is in no other dataset
   would find there: the null distribution of the statistic step 3 thresholds (a best match among many
   different people, not a single impostor pair; the per-pair rate would let about (classes of the other
   dataset) x rate false pairs through per identity). The cut is set so that at most a share
   ``false_match_rate`` of these nearest-within scores reaches it (score >= cut), i.e. just above the
   (k+1)-th highest, k = floor(false_match_rate * classes). ``false_match_rate`` thus reads "the share of
   identities present in one dataset only that would be listed". With fewer than 1/false_match_rate
   classes so small a rate cannot be measured: k = 0, the cut lies just above the highest nearest-within
   score, and ``calibration_reliable`` is False.
3. Candidates: for every two datasets a < b, the pairs (i in a, j in b) where j is i's most similar class
   in b and i is j's most similar class in a (mutual nearest neighbours), kept when their cosine >= cut.

Pure numpy/torch: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

DEFAULT_FALSE_MATCH_RATE = 1e-3


@dataclass(frozen=True)
class OverlapPair:
    """Global class indices (first in the earlier dataset) and their centres' cosine similarity."""

    first: int
    second: int
    score: float


@dataclass
class OverlapResult:
    pairs: list[OverlapPair]
    threshold: float
    false_match_rate: float
    calibration_classes: int  # classes whose nearest-within score calibrated the cut
    calibration_reliable: bool
    calibration_above: int = 0  # of those, how many reach the cut (<= floor(rate * classes))
    blocks: list[tuple[int, int]] = field(default_factory=list)  # (offset, count) per dataset


def block_ranges(classes_per_dataset: Sequence[int]) -> list[tuple[int, int]]:
    """(class_offset, num_classes) of each dataset in the consecutive label space."""
    blocks, offset = [], 0
    for count in classes_per_dataset:
        if count < 1:
            raise ValueError("every dataset needs at least one class")
        blocks.append((offset, int(count)))
        offset += int(count)
    return blocks


def unit_rows(centres: torch.Tensor | np.ndarray) -> np.ndarray:
    """float64 rows scaled to unit length (an all-zero row stays zero)."""
    array = centres.detach().cpu().double().numpy() if isinstance(centres, torch.Tensor) else centres
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"centres must be [classes, dim], got shape {array.shape}")
    return array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)


def nearest_within_scores(unit: np.ndarray, blocks: Sequence[tuple[int, int]]) -> np.ndarray:
    """Per class (of a dataset with >= 2 classes): the cosine of the most similar other class of its own
    dataset, a different person by construction. All datasets, concatenated in class order."""
    parts = []
    for offset, count in blocks:
        if count < 2:
            continue
        block = unit[offset : offset + count]
        similarity = block @ block.T
        np.fill_diagonal(similarity, -np.inf)
        parts.append(similarity.max(axis=1))
    return np.concatenate(parts) if parts else np.empty(0)


def calibrated_cut(impostor_scores: np.ndarray, false_match_rate: float) -> tuple[float, bool]:
    """(cut, reliable): at most floor(rate * n) of the n impostor scores are >= cut (see module doc)."""
    if not 0.0 < false_match_rate < 1.0:
        raise ValueError("false_match_rate must lie in (0, 1)")
    if impostor_scores.size == 0:
        return math.inf, False
    ordered = np.sort(impostor_scores)[::-1]
    allowed = int(math.floor(false_match_rate * ordered.size))
    cut = float(np.nextafter(ordered[allowed], np.inf))
    return cut, bool(ordered.size >= math.ceil(1.0 / false_match_rate - 1e-9))


def mutual_nearest_pairs(
    unit: np.ndarray, blocks: Sequence[tuple[int, int]], threshold: float
) -> list[OverlapPair]:
    """Mutual nearest neighbours across every two dataset blocks with cosine >= threshold, best first."""
    pairs: list[OverlapPair] = []
    for a, (offset_a, count_a) in enumerate(blocks):
        for offset_b, count_b in blocks[a + 1 :]:
            similarity = unit[offset_a : offset_a + count_a] @ unit[offset_b : offset_b + count_b].T
            best_in_b = similarity.argmax(axis=1)  # ties: the lowest index, both ways
            best_in_a = similarity.argmax(axis=0)
            for i, j in enumerate(best_in_b):
                score = float(similarity[i, j])
                if best_in_a[j] == i and score >= threshold:
                    pairs.append(OverlapPair(offset_a + i, offset_b + int(j), score))
    pairs.sort(key=lambda pair: (-pair.score, pair.first, pair.second))
    return pairs


def find_overlaps(
    centres: torch.Tensor | np.ndarray,
    classes_per_dataset: Sequence[int],
    *,
    false_match_rate: float = DEFAULT_FALSE_MATCH_RATE,
) -> OverlapResult:
    """Identity pairs across datasets that are probably one person (the rule of the module doc)."""
    blocks = block_ranges(classes_per_dataset)
    unit = unit_rows(centres)
    if unit.shape[0] != sum(count for _, count in blocks):
        raise ValueError(f"{unit.shape[0]} centres for {sum(c for _, c in blocks)} classes")
    impostors = nearest_within_scores(unit, blocks)
    cut, reliable = calibrated_cut(impostors, false_match_rate)
    return OverlapResult(
        pairs=mutual_nearest_pairs(unit, blocks, cut) if len(blocks) > 1 else [],
        threshold=cut,
        false_match_rate=false_match_rate,
        calibration_classes=int(impostors.size),
        calibration_reliable=reliable,
        calibration_above=int((impostors >= cut).sum()),
        blocks=blocks,
    )


def precision_recall(
    found: Iterable[tuple[Hashable, Hashable]], truth: Iterable[tuple[Hashable, Hashable]]
) -> tuple[float, float, int]:
    """(precision, recall, correct) of found unordered pairs against the true ones.

    Precision is 1.0 when nothing was found, recall 1.0 when there is nothing to find.
    """
    found_set = {frozenset(pair) for pair in found}
    truth_set = {frozenset(pair) for pair in truth}
    correct = len(found_set & truth_set)
    precision = correct / len(found_set) if found_set else 1.0
    recall = correct / len(truth_set) if truth_set else 1.0
    return precision, recall, correct
