"""The authentication operating point a model card ships: the cosine threshold a terminal applies.

Two things make it mean what it says:

* It is chosen on the scores a terminal computes: the cosine of single-view embeddings (a terminal embeds
  the frame as it is; it does not fuse the embedding of the horizontally flipped image). The evaluation's
  headline metrics use flip-fused embeddings, whose score distribution differs: a threshold chosen there
  and applied to single-view scores accepts another share of impostors and genuine users than the card
  says. The shift goes either way (measured: on the demo's rendered faces a briefly trained tiny model's
  1%-FAR threshold was 0.923 on fused, 0.903 on single-view scores, so terminals refused genuine users
  the card counted as accepted; on tests/terminal's faces 0.681 fused, 0.693 single-view).
* It needs enough impostor pairs. Rule: accept when score >= threshold, the threshold just above the
  (k+1)-th highest impostor score, k = floor(operating_far x impostor pairs): at most operating_far of the
  set's impostors are accepted. With fewer than 1/operating_far impostor pairs, k = 0 whatever the FAR:
  the set cannot measure so small a rate, ``reliable`` is False, and the stated fallback is the lowest
  FAR the set can measure: no impostor of the set accepted (threshold just above the highest impostor
  score). Its honest guarantee is ``far_upper_95`` = 1 - 0.05^(1/n) (about 3/n, the "rule of three"):
  the 95% upper confidence bound of the true FAR when none of n impostors is accepted. The EER threshold,
  the other candidate, is stabler but accepts about EER of the impostors, usually far above the FAR
  asked for: wrong for a lock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from pydantic import BaseModel, Field

SCORING = "cosine of single-view embeddings (what a terminal computes)"
RULE_FAR = "at most operating_far of the set's impostor pairs accepted"
RULE_FALLBACK = (
    "fewer than 1/operating_far impostor pairs: no impostor of the set accepted (threshold just above the "
    "highest impostor score), the lowest FAR the set can measure"
)


class OperatingPoint(BaseModel):
    set_name: str
    scoring: str = SCORING
    operating_far: float
    threshold: float = Field(description="accept when cosine >= threshold")
    rule: str
    reliable: bool = Field(description="False: fewer than 1/operating_far impostor pairs (the fallback rule)")
    impostor_pairs: int
    genuine_pairs: int
    far: float = Field(description="share of the set's impostor pairs accepted at the threshold")
    tar: float = Field(description="share of the set's genuine pairs accepted at the threshold")
    far_upper_95: float = Field(description="95% upper confidence bound of the true FAR (binomial)")


def _far_upper_95(accepted: int, total: int) -> float:
    """Clopper-Pearson 95% one-sided upper bound of a rate with ``accepted`` of ``total`` observed."""
    if total == 0:
        return 1.0
    if accepted == 0:
        return 1.0 - 0.05 ** (1.0 / total)
    if accepted >= total:
        return 1.0
    # bisection on the binomial tail P(X <= accepted; p) = 0.05
    low, high = accepted / total, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        tail = sum(math.comb(total, i) * mid**i * (1 - mid) ** (total - i) for i in range(accepted + 1))
        low, high = (mid, high) if tail > 0.05 else (low, mid)
    return high


def choose_operating_point(
    scores: torch.Tensor | np.ndarray | Sequence[float],
    is_same: torch.Tensor | np.ndarray | Sequence[bool],
    *,
    operating_far: float,
    set_name: str,
) -> OperatingPoint:
    """The card's threshold on these (single-view cosine) pair scores; the rule of the module doc."""
    if not 0.0 < operating_far < 1.0:
        raise ValueError("operating_far must lie in (0, 1)")
    s = (
        (scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores))
        .astype(np.float64)
        .reshape(-1)
    )
    same = (
        (is_same.detach().cpu().numpy() if isinstance(is_same, torch.Tensor) else np.asarray(is_same))
        .astype(bool)
        .reshape(-1)
    )
    impostors = np.sort(s[~same])[::-1]
    if impostors.size == 0 or not same.any():
        raise ValueError("an operating point needs genuine and impostor pairs")
    reliable = impostors.size >= math.ceil(1.0 / operating_far - 1e-9)
    allowed = int(math.floor(operating_far * impostors.size)) if reliable else 0
    threshold = float(np.nextafter(impostors[allowed], np.inf))
    accepted = int((impostors >= threshold).sum())
    return OperatingPoint(
        set_name=set_name,
        operating_far=operating_far,
        threshold=threshold,
        rule=RULE_FAR if reliable else RULE_FALLBACK,
        reliable=reliable,
        impostor_pairs=int(impostors.size),
        genuine_pairs=int(same.sum()),
        far=accepted / impostors.size,
        tar=float((s[same] >= threshold).mean()),
        far_upper_95=_far_upper_95(accepted, int(impostors.size)),
    )
