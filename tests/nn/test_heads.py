"""DatasetAwareMarginHead against a float64 masked full-softmax reference written out here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facefleet.nn.heads import DatasetAwareMarginHead, margin_target_cos, sample_crossing_positions

MARGINS = {  # kind -> (s, m1, m2, m3)
    "softmax": (1.0, 1.0, 0.0, 0.0),
    "sphereface": (30.0, 4.0, 0.0, 0.0),
    "cosface": (30.0, 1.0, 0.0, 0.35),
    "arcface": (30.0, 1.0, 0.5, 0.0),
    "combined": (30.0, 1.0, 0.3, 0.2),
}


def reference_psi(cos: torch.Tensor, kind: str, m1: float, m2: float, m3: float) -> torch.Tensor:
    theta = torch.acos(cos.clamp(-1.0, 1.0))
    if kind == "cosface":
        return cos - m3
    if kind == "arcface":
        return torch.where(theta + m2 <= math.pi, torch.cos(theta + m2), cos - m2 * math.sin(m2))
    angle = m1 * theta + m2
    k = torch.floor(angle / math.pi)
    return (-1.0) ** k * torch.cos(angle) - 2 * k - m3


def reference_loss(x, weight, bias, labels, dataset_index, class_dataset, kind, include=None):
    """Dense N×C logits, margin on the target, classes of other datasets masked to −inf, mean CE."""
    s, m1, m2, m3 = MARGINS[kind]
    if kind == "softmax":
        logits = x @ weight.t() + (bias if bias is not None else 0.0)
    else:
        cos = F.normalize(x, dim=1) @ F.normalize(weight, dim=1).t()
        target = reference_psi(cos.gather(1, labels[:, None]), kind, m1, m2, m3)
        logits = (s * cos).scatter(1, labels[:, None], s * target)
    mask = class_dataset[None, :] == dataset_index[:, None]
    if include is not None:
        mask = mask | include
    return F.cross_entropy(logits.masked_fill(~mask, -math.inf), labels)


def make_batch(classes: list[int], n: int, dim: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.tensor([0] + classes[:-1]).cumsum(0)
    dataset_index = torch.randint(0, len(classes), (n,), generator=gen)
    local = (torch.rand(n, generator=gen, dtype=torch.float64) * torch.tensor(classes)[dataset_index]).long()
    labels = offsets[dataset_index] + local
    class_dataset = torch.repeat_interleave(torch.arange(len(classes)), torch.tensor(classes))
    x = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    return x, labels, dataset_index, class_dataset


def make_head(classes: list[int], dim: int, kind: str, bias: bool | None = None, p: float = 0.0):
    s, m1, m2, m3 = MARGINS[kind]
    head = DatasetAwareMarginHead(dim, classes, kind, s, m1, m2, m3, crossing_p=p, bias=bias).double()
    with torch.no_grad():
        head.weight.normal_(0, 1.0)
        if head.bias is not None:
            head.bias.normal_(0, 1.0)
    return head


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("kind", list(MARGINS))
@pytest.mark.parametrize("classes", [[7], [5, 9], [3, 8, 4, 6]])
def test_head_equals_masked_full_softmax(kind: str, classes: list[int]) -> None:
    for bias in [True, False] if kind == "softmax" else [None]:
        head = make_head(classes, 6, kind, bias)
        x, labels, dataset_index, class_dataset = make_batch(classes, 24, 6, seed=len(classes))
        x.requires_grad_(True)
        params = [x, head.weight] + ([head.bias] if head.bias is not None else [])
        loss = head(x, labels, dataset_index)
        expected = reference_loss(x, head.weight, head.bias, labels, dataset_index, class_dataset, kind)
        assert torch.allclose(loss, expected, atol=1e-6, rtol=0)
        for got, want in zip(grads(loss, params), grads(expected, params), strict=True):
            assert torch.allclose(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", list(MARGINS))
def test_full_crossing_and_single_dataset_equal_plain_cross_entropy(kind: str) -> None:
    x, labels, dataset_index, class_dataset = make_batch([5, 9, 4], 20, 6, seed=3)
    x.requires_grad_(True)
    crossed = make_head([5, 9, 4], 6, kind, p=1.0)
    single = make_head([18], 6, kind)
    single.load_state_dict(crossed.state_dict())
    everything = torch.ones(20, 18, dtype=torch.bool)
    expected = reference_loss(
        x, crossed.weight, crossed.bias, labels, dataset_index, class_dataset, kind, include=everything
    )
    if kind == "softmax":
        plain = F.cross_entropy(x @ crossed.weight.t() + crossed.bias, labels)
        assert torch.allclose(plain, expected, atol=1e-12)
    want = grads(expected, [x, crossed.weight])  # single holds the same weight values
    for head, index in ((crossed, dataset_index), (single, torch.zeros_like(dataset_index))):
        loss = head(x, labels, index)
        assert torch.allclose(loss, expected, atol=1e-6, rtol=0)
        for g, w in zip(grads(loss, [x, head.weight]), want, strict=True):
            assert torch.allclose(g, w, atol=1e-6, rtol=0)


def replay_crossing(classes: list[int], dataset_index: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """The N×C inclusion mask of the documented draw order: own dataset k ascending, then each other
    dataset ascending, one `sample_crossing_positions(n_k, C_other, p)` each."""
    replay = torch.Generator().manual_seed(seed)
    include = torch.zeros(dataset_index.numel(), sum(classes), dtype=torch.bool)
    offsets = [sum(classes[:k]) for k in range(len(classes))]
    for k in range(len(classes)):
        members = (dataset_index == k).nonzero().flatten()
        for other in range(len(classes)):
            if other == k or members.numel() == 0:
                continue
            positions = sample_crossing_positions(members.numel(), classes[other], p, replay)
            rows, cols = positions // classes[other], positions % classes[other]
            include[members[rows], offsets[other] + cols] = True
    return include


@pytest.mark.parametrize("kind", ["softmax", "arcface", "sphereface"])
def test_partial_crossing_equals_reference_with_the_same_draws(kind: str) -> None:
    classes = [6, 30, 12]
    x, labels, dataset_index, class_dataset = make_batch(classes, 18, 5, seed=7)
    x.requires_grad_(True)
    head = make_head(classes, 5, kind, p=0.3)
    head.generator = torch.Generator().manual_seed(11)
    params = [x, head.weight] + ([head.bias] if head.bias is not None else [])
    loss = head(x, labels, dataset_index)
    include = replay_crossing(classes, dataset_index, 0.3, seed=11)
    expected = reference_loss(x, head.weight, head.bias, labels, dataset_index, class_dataset, kind, include)
    assert include.any()
    assert torch.allclose(loss, expected, atol=1e-6, rtol=0)
    for got, want in zip(grads(loss, params), grads(expected, params), strict=True):
        assert torch.allclose(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["softmax", "cosface"])
def test_dataset_absent_from_batch_and_frozen_inputs(kind: str) -> None:
    """Classes of a dataset with no sample get a gradient only where a crossing draw included them (exact
    zeros elsewhere); a frozen x or weight still gives the right gradient to the other."""
    classes = [5, 7, 4]
    x, labels, dataset_index, class_dataset = make_batch(classes, 16, 6, seed=5)
    keep = dataset_index != 1
    x, labels, dataset_index = x[keep], labels[keep], dataset_index[keep]
    head = make_head(classes, 6, kind, p=0.25)
    include = replay_crossing(classes, dataset_index, 0.25, seed=3)
    drawn_absent_classes = include[:, 5:12].any(dim=0)
    assert drawn_absent_classes.any() and not drawn_absent_classes.all()
    for frozen in ("weight", "x", None):
        x.requires_grad_(frozen != "x")
        head.weight.requires_grad_(frozen != "weight")
        head.generator = torch.Generator().manual_seed(3)
        trainable = [t for t in (x, head.weight) if t.requires_grad]
        loss = head(x, labels, dataset_index)
        weight, bias = head.weight, head.bias
        expected = reference_loss(x, weight, bias, labels, dataset_index, class_dataset, kind, include)
        assert torch.allclose(loss, expected, atol=1e-6, rtol=0)
        got, want = grads(loss, trainable), grads(expected, trainable)
        for g, w in zip(got, want, strict=True):
            assert torch.allclose(g, w, atol=1e-6, rtol=0)
        if frozen != "weight":
            assert torch.equal(got[-1][5:12].abs().sum(dim=1) > 0, drawn_absent_classes)


@pytest.mark.parametrize("p", [0.02, 0.3, 0.8])
def test_crossing_positions_are_bernoulli_p_per_position(p: float) -> None:
    gen = torch.Generator().manual_seed(0)
    rows, cols, trials = 8, 50, 3000
    counts = torch.zeros(rows * cols)
    for _ in range(trials):
        positions = sample_crossing_positions(rows, cols, p, gen)
        assert positions.unique().numel() == positions.numel()
        counts[positions] += 1
    rate = counts / trials
    # Over generator seeds 0-4 and p in {0.02, 0.3, 0.8}, native and ATEN_CPU_CAPABILITY=default identical
    # (scripts/spreads/small.py): |mean rate - p| <= 6.5e-4; max |rate - p| / sd = 2.6 .. 4.6.
    assert abs(rate.mean().item() - p) < 0.01
    sd = math.sqrt(p * (1 - p) / trials)
    assert (rate - p).abs().max().item() < 6 * sd  # no position favoured or starved


def test_head_includes_other_dataset_classes_at_rate_p() -> None:
    """End to end: the dataset-1 classes that get a gradient from one dataset-0 sample are the drawn ones."""
    p, other_classes = 0.05, 4000
    head = make_head([3, other_classes], 4, "softmax", p=p)
    x = torch.randn(1, 4, dtype=torch.float64)
    included = []
    for _ in range(40):
        loss = head(x, torch.tensor([1]), torch.tensor([0]))
        (weight_grad,) = grads(loss, [head.weight])
        included.append((weight_grad[3:].abs().sum(dim=1) > 0).double().mean().item())
    # |share - p| over torch seeds 0-4, native and default identical: 1.3e-4 .. 5.3e-4 (sd of the mean 5.4e-4)
    assert abs(sum(included) / len(included) - p) < 0.004
    assert len({round(r, 6) for r in included}) > 1  # fresh draws every call


def test_arcface_beyond_pi_is_finite() -> None:
    cos = torch.tensor([-1.0, -0.999999, -0.95, 0.0, 0.999999, 1.0], dtype=torch.float64, requires_grad=True)
    for kind in ("arcface", "sphereface", "combined"):
        _, m1, m2, m3 = MARGINS[kind]
        psi = margin_target_cos(cos, kind, m1, m2, m3)
        (grad,) = torch.autograd.grad(psi.sum(), cos)
        assert torch.isfinite(psi).all() and torch.isfinite(grad).all()
    head = make_head([4, 3], 8, "arcface")
    x = -head.weight[[0, 5]].detach().clone().float()  # θ = π for the target class
    loss = head.float()(x.requires_grad_(True), torch.tensor([0, 5]), torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()


def test_margin_functions_match_reference_and_gradcheck() -> None:
    cos = torch.linspace(-0.98, 0.98, 41, dtype=torch.float64)
    for kind, (_, m1, m2, m3) in MARGINS.items():
        if kind == "softmax":
            continue
        assert torch.allclose(
            margin_target_cos(cos, kind, m1, m2, m3), reference_psi(cos, kind, m1, m2, m3), atol=1e-9
        )
        smooth = torch.linspace(-0.8, 0.85, 9, dtype=torch.float64).requires_grad_(True)
        margins = (kind, m1, m2, m3)
        assert torch.autograd.gradcheck(lambda c, args=margins: margin_target_cos(c, *args), (smooth,))


def test_rejects_labels_outside_their_dataset() -> None:
    head = make_head([3, 4], 4, "cosface")
    with pytest.raises(ValueError, match="dataset 0"):
        head(torch.randn(1, 4, dtype=torch.float64), torch.tensor([5]), torch.tensor([0]))
    with pytest.raises(ValueError, match="bias"):
        DatasetAwareMarginHead(4, [3], "arcface", bias=True)
