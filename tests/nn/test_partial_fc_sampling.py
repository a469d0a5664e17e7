"""The per-shard head math (facefleet.nn.partial_fc) in one process: shard ranges, negative sampling and
the equivalence of a sampled head with the dataset-aware head over the kept classes only."""

from __future__ import annotations

import math

import pytest
import torch

from facefleet.nn.heads import DatasetAwareMarginHead
from facefleet.nn.partial_fc import (
    ShardedMarginHead,
    class_uniforms,
    sampled_classes,
    shard_range,
    step_seed,
)


def test_shards_cover_every_class_exactly_once() -> None:
    for classes, world in [(18, 2), (7, 3), (10, 10), (2_000_003, 8)]:
        ranges = [shard_range(classes, world, r) for r in range(world)]
        assert ranges[0][0] == 0 and ranges[-1][1] == classes
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
        sizes = [end - start for start, end in ranges]
        assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="every shard needs a class"):
        shard_range(3, 4, 0)


def test_class_uniforms_look_uniform_and_change_with_the_step() -> None:
    ids = torch.arange(200_000)
    u = class_uniforms(ids, seed=3, step=7)
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    # 200k draws: mean within 5 standard errors (0.00065) of 1/2, every tenth of [0, 1) within 3%
    assert abs(float(u.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / ids.numel())
    counts = torch.histc(u.float(), bins=10, min=0.0, max=1.0)
    assert float((counts / (ids.numel() / 10) - 1).abs().max()) < 0.03
    assert torch.equal(u, class_uniforms(ids, seed=3, step=7))
    assert float((u - class_uniforms(ids, seed=3, step=8)).abs().mean()) > 0.2
    assert float((u - class_uniforms(ids, seed=4, step=7)).abs().mean()) > 0.2


def test_sampling_keeps_every_positive_and_about_r_of_the_rest() -> None:
    classes, rate = 100_000, 0.1
    positives = torch.randint(0, classes, (512,), generator=torch.Generator().manual_seed(0))
    kept = sampled_classes(0, classes, rate, positives, seed=1, step=5)
    assert bool(torch.isin(positives, kept).all())
    assert torch.equal(kept, kept.sort().values) and kept.unique().numel() == kept.numel()
    negatives = classes - positives.unique().numel()
    expected = rate * negatives + positives.unique().numel()
    # Binomial(negatives, r): 5 standard deviations
    assert abs(kept.numel() - expected) < 5 * math.sqrt(negatives * rate * (1 - rate))


def test_sampling_is_the_same_whatever_the_sharding() -> None:
    classes = 10_007
    positives = torch.tensor([0, 5, 5000, 10_006, 7777])
    whole = sampled_classes(0, classes, 0.2, positives, seed=2, step=9)
    for world in (2, 3, 8):
        parts = [
            sampled_classes(*shard_range(classes, world, r), 0.2, positives, seed=2, step=9)
            for r in range(world)
        ]
        assert torch.equal(torch.cat(parts), whole)
    other_step = sampled_classes(0, classes, 0.2, positives, seed=2, step=10)
    assert not torch.equal(other_step, whole)


@pytest.mark.parametrize("kind", ["arcface", "softmax"])
def test_a_sampled_head_is_the_dataset_aware_head_over_the_kept_classes(kind: str) -> None:
    """r < 1, p = 0: each sample's denominator is its own dataset's kept classes, nothing else; the
    unsampled rows get no gradient."""
    torch.manual_seed(0)
    classes = [40, 25, 60]
    offsets = torch.tensor([0, 40, 65])
    head = ShardedMarginHead(8, classes, None, kind=kind, s=8.0, m2=0.3, sample_rate=0.3, seed=4).double()
    datasets = torch.tensor([0, 0, 1, 2, 2, 2, 1, 0])
    labels = offsets[datasets] + (torch.rand(8) * torch.tensor(classes)[datasets]).long()
    x = torch.randn(8, 8, dtype=torch.float64, requires_grad=True)
    loss = head(x, labels, datasets, step=3)
    loss.backward()

    kept = sampled_classes(0, sum(classes), 0.3, labels, seed=4, step=3)
    bounds = zip(offsets.tolist(), classes, strict=True)
    per_block = [int(((kept >= o) & (kept < o + c)).sum()) for o, c in bounds]
    reduced = DatasetAwareMarginHead(8, per_block, kind=kind, s=8.0, m2=0.3).double()
    with torch.no_grad():
        reduced.weight.copy_(head.weight[kept])
        if reduced.bias is not None and head.bias is not None:
            reduced.bias.copy_(head.bias[kept])
    x_ref = x.detach().clone().requires_grad_(True)
    expected = reduced(x_ref, torch.searchsorted(kept, labels), datasets)
    expected.backward()
    assert abs(float(loss.detach()) - float(expected.detach())) < 1e-12
    assert x.grad is not None and x_ref.grad is not None and head.weight.grad is not None
    assert float((x.grad - x_ref.grad).abs().max()) < 1e-12
    assert reduced.weight.grad is not None
    assert float((head.weight.grad[kept] - reduced.weight.grad).abs().max()) < 1e-12
    dropped = torch.ones(sum(classes), dtype=torch.bool)
    dropped[kept] = False
    assert int(dropped.sum()) > 0 and float(head.weight.grad[dropped].abs().max()) == 0.0


def test_crossing_entries_survive_sampling_and_match_a_fixed_draw() -> None:
    """r < 1 with crossing: same loss whatever the shard order of evaluation (draws seeded per step)."""
    torch.manual_seed(1)
    head = ShardedMarginHead(8, [30, 30], None, s=8.0, m2=0.3, crossing_p=0.2, sample_rate=0.5, seed=2)
    datasets = torch.tensor([0, 1, 1, 0])
    labels = torch.tensor([3, 31, 59, 29])
    x = torch.randn(4, 8)
    first, again = (head(x, labels, datasets, step=1).detach() for _ in range(2))
    assert float(first) == float(again)
    assert float(first) != float(head(x, labels, datasets, step=2).detach())
    assert step_seed(2, 1) != step_seed(2, 2)


def test_full_matrix_state_dict_loads_into_a_shard() -> None:
    full = ShardedMarginHead(4, [5, 6], None)
    part = ShardedMarginHead(4, [5, 6], (3, 8))
    part.load_state_dict(full.state_dict())
    assert torch.equal(part.weight, full.weight[3:8])
    with pytest.raises(ValueError, match="sample_rate"):
        ShardedMarginHead(4, [5, 6], None, sample_rate=0.0)
