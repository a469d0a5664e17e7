"""The overlap finder on a learned embedding: tests/nn/test_learning.py's world (3 synthetic datasets in
their own colour styles; every person is in two of them under other labels), trained by that test's loop
with the dataset-aware head. Precision and recall against the known truth, bounds measured over seeds."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from facefleet.nn.overlaps import find_overlaps, precision_recall
from tests.nn.test_learning import MEMBERS, K, make_world, render, train

RENDERS = 8  # images per class for the mean-embedding centres (the worker uses up to 8)


def measure(seed: int) -> dict[str, float]:
    world = make_world(seed=seed)
    net = train(world, crossing_p=0.0, switch_step=None, lambd=0.0, seed=seed + 1).net.eval()
    gen = torch.Generator().manual_seed(seed + 7)
    people = torch.tensor([person for members in MEMBERS for person in members])
    styles = torch.tensor([k for k, members in enumerate(MEMBERS) for _ in members])
    with torch.no_grad():
        images = render(world, people.repeat_interleave(RENDERS), styles.repeat_interleave(RENDERS), gen)
        fused = F.normalize(net(images) + net(torch.flip(images, dims=[3])), dim=1)
        centres = F.normalize(fused.view(len(people), RENDERS, -1).mean(1), dim=1)
    truth = [
        (i, j)
        for i in range(len(people))
        for j in range(i + 1, len(people))
        if people[i] == people[j] and styles[i] != styles[j]
    ]
    result = find_overlaps(centres, [len(m) for m in MEMBERS])
    found = [(p.first, p.second) for p in result.pairs]
    precision, recall, correct = precision_recall(found, truth)
    return {
        "precision": precision,
        "recall": recall,
        "found": len(found),
        "false": len(found) - correct,
        "true": len(truth),
    }


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_overlap_finder_on_a_learned_embedding() -> None:
    torch.set_num_threads(1)
    measured = measure(0)
    assert measured["true"] == 48 and K == 3
    # scripts/spreads/overlaps_world.py, seeds 0-4 (native AVX512 only; not yet with
    # ATEN_CPU_CAPABILITY=default): false pairs listed 1, 1, 0, 0, 0; found 1, 16, 0, 0, 0; precision
    # 0.0, 0.94, -, -, -; recall 0.0, 0.31, 0.0, 0.0, 0.0. The calibrated cut keeps false matches rare;
    # recall is as weak as this embedding's cross-style matching (its mutual nearest neighbours without
    # any cut are right for 8-46% of the true pairs at seeds 0-1), far from the target.
    assert measured["false"] <= 3
