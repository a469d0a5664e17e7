"""The card's operating point: at most operating_far of the impostors accepted, or, with fewer than
1/operating_far impostor pairs, the stated fallback (no impostor of the set accepted), said so."""

from __future__ import annotations

import numpy as np
import pytest

from facefleet.nn.operating_point import RULE_FALLBACK, RULE_FAR, choose_operating_point
from facefleet.nn.verification import verification_metrics


def test_enough_impostors_accept_at_most_the_far() -> None:
    rng = np.random.default_rng(0)
    same = np.r_[np.ones(300, bool), np.zeros(300, bool)]
    scores = np.r_[rng.normal(0.7, 0.1, 300), rng.normal(0.2, 0.1, 300)]
    point = choose_operating_point(scores, same, operating_far=0.01, set_name="v")
    assert point.reliable and point.rule == RULE_FAR and point.impostor_pairs == 300
    assert (scores[~same] >= point.threshold).sum() == 3 and point.far == 0.01
    # the same threshold as the verification metrics' operating point on the same scores
    assert (
        point.threshold == verification_metrics(scores, same, operating_far=0.01).threshold_at_operating_far
    )
    assert 0.01 < point.far_upper_95 < 0.03


def test_too_few_impostors_fall_back_and_say_so() -> None:
    rng = np.random.default_rng(1)
    same = np.r_[np.ones(40, bool), np.zeros(40, bool)]
    scores = np.r_[rng.normal(0.7, 0.1, 40), rng.normal(0.2, 0.1, 40)]
    point = choose_operating_point(scores, same, operating_far=0.01, set_name="v")
    assert not point.reliable and point.rule == RULE_FALLBACK
    assert point.threshold > scores[~same].max() and point.far == 0.0
    assert point.far_upper_95 == pytest.approx(1 - 0.05 ** (1 / 40)) and point.far_upper_95 > 0.07  # ~3/40
    with pytest.raises(ValueError, match="operating_far"):
        choose_operating_point(scores, same, operating_far=0.0, set_name="v")
