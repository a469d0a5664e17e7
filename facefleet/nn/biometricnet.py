"""BioMetricNet metric head (seed 003): ModelNet, the closed-form KL loss, pairs, hard mining, decision."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


class ModelNet(nn.Module):
    """Fully connected metric net: [f1, f2] ([P, 2·feature_dim]) -> z [P, out_dim].

    `layers` linear layers whose widths shrink geometrically from 2·feature_dim to out_dim, ReLU and
    dropout (keep probability `keep_prob`) after each but the last (seed: 7 layers, m = 1, keep 0.8).
    Note the input order matters: use `four_way_flip_average` / symmetric pairs at test time.

    Initialisation: He-normal weights and zero biases in the ReLU layers (PyTorch's default shrinks the
    signal ~2.5x per layer, so z starts nearly constant and the pair-dependent part learns slowly), and
    the output bias at `output_init` — pass the midpoint of the two targets, (mu_m + mu_n) / 2. Starting
    at 0 = mu_m, the first steps shift every output by ~20 together; under SGD momentum that shift
    overshoots and leaves most units of the narrow layers dead, and a dead ModelNet is a constant.
    """

    def __init__(
        self,
        feature_dim: int,
        out_dim: int = 1,
        layers: int = 7,
        keep_prob: float = 0.8,
        *,
        output_init: float = 0.0,
        pair_features: str = "concat",
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if layers < 1 or not 0.0 < keep_prob <= 1.0:
            raise ValueError("ModelNet needs layers >= 1 and keep_prob in (0, 1]")
        if pair_features not in ("concat", "symmetric"):
            raise ValueError("pair_features must be 'concat' or 'symmetric'")
        self.pair_features = pair_features
        start = 2 * feature_dim
        widths = [max(out_dim, round(start * (out_dim / start) ** (i / layers))) for i in range(layers + 1)]
        widths[-1] = out_dim
        modules: list[nn.Module] = []
        # With a seed ModelNet draws its initial weights and dropout masks from its own generators, so
        # adding it to a model leaves every other random draw of training (initialisation of the rest,
        # sampled classes, ...) as it was without it.
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            for i in range(layers):
                linear = nn.Linear(widths[i], widths[i + 1])
                modules.append(linear)
                if i < layers - 1:
                    nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
                    nn.init.zeros_(linear.bias)
                    modules += [
                        nn.ReLU(),
                        SeededDropout(1.0 - keep_prob, None if seed is None else seed + 1 + i),
                    ]
                else:
                    nn.init.constant_(linear.bias, output_init)
        self.net = nn.Sequential(*modules)
        self.feature_dim, self.out_dim = feature_dim, out_dim

    def forward(self, features_a: torch.Tensor, features_b: torch.Tensor) -> torch.Tensor:
        return self.net(pair_input(features_a, features_b, self.pair_features))


class SeededDropout(nn.Module):
    """`nn.Dropout` whose masks come from its own generator when `seed` is set (the global one otherwise)."""

    def __init__(self, p: float, seed: int | None = None) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError("dropout probability must lie in [0, 1)")
        self.p, self.seed = p, seed
        self._generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.seed is None:
            return nn.functional.dropout(x, self.p, training=True)
        if self._generator is None or self._generator.device != x.device:
            self._generator = torch.Generator(device=x.device).manual_seed(self.seed)
        keep = 1.0 - self.p
        return x * torch.empty_like(x).bernoulli_(keep, generator=self._generator) / keep


def pair_input(features_a: torch.Tensor, features_b: torch.Tensor, kind: str = "concat") -> torch.Tensor:
    """ModelNet's input [P, 2·D]: the seed's [f1, f2], or "symmetric" [f1 ⊙ f2, |f1 − f2|], which does not
    depend on the pair's order and holds the cosine of unit features as a linear function (the sum of the
    first half), so a ModelNet can start from the cosine decision instead of learning a product."""
    if kind == "symmetric":
        return torch.cat([features_a * features_b, (features_a - features_b).abs()], dim=1)
    return torch.cat([features_a, features_b], dim=1)


class _GradientScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad_output * ctx.scale, None


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward; the gradient times `scale` backward (0: x.detach(), 1: x unchanged)."""
    if scale == 0.0:
        return x.detach()
    if scale == 1.0:
        return x
    return _GradientScale.apply(x, float(scale))


def gaussian_kl_to_isotropic(
    z: torch.Tensor, mu_target: float, sigma_target: float, eps: float = 1e-6
) -> torch.Tensor:
    """KL(N(mean(z), diag var(z)) ‖ N(mu_target·1, sigma_target²·I)) in closed form (batch statistics,
    population variance, clamped at eps). z is [P, m] with P >= 2."""
    if z.dim() != 2 or z.shape[0] < 2:
        raise ValueError("the KL loss needs at least two outputs [P >= 2, m] to estimate a variance")
    mean = z.mean(dim=0)
    var = z.var(dim=0, unbiased=False).clamp_min(eps)
    target_var = sigma_target**2
    m = z.shape[1]
    return 0.5 * (
        torch.log(target_var / var).sum()
        - m
        + (var / target_var).sum()
        + ((mean - mu_target) ** 2).sum() / target_var
    )


def biometricnet_kl_loss(
    z_match: torch.Tensor,
    z_nonmatch: torch.Tensor,
    mu_m: float = 0.0,
    mu_n: float = 40.0,
    sigma_m: float = 1.0,
    sigma_n: float = 1.0,
) -> torch.Tensor:
    """½·KL(matching outputs ‖ N(mu_m·1, sigma_m²I)) + ½·KL(non-matching outputs ‖ N(mu_n·1, sigma_n²I)).

    z_match [P, m], z_nonmatch [Q, m] (P, Q >= 2), each summarised by its per-dimension batch mean and
    variance; uses the squared norm of the mean difference (the seed's text drops the square by mistake).
    """
    return 0.5 * gaussian_kl_to_isotropic(z_match, mu_m, sigma_m) + 0.5 * gaussian_kl_to_isotropic(
        z_nonmatch, mu_n, sigma_n
    )


@dataclass(frozen=True)
class Pairs:
    """Row indices into a batch: `match` [P, 2] (same label), `nonmatch` [Q, 2] (other label, one dataset)."""

    match: torch.Tensor
    nonmatch: torch.Tensor


def make_pairs(
    labels: torch.Tensor,
    dataset_index: torch.Tensor,
    *,
    max_nonmatch: int | None = None,
    generator: torch.Generator | None = None,
) -> Pairs:
    """All matching pairs i < j with equal labels, and non-matching pairs i < j with different labels
    drawn only within one dataset (across datasets two labels may be the same person).

    With `max_nonmatch`, a uniform random subset of that many non-matching pairs is kept (their count
    grows with the square of the batch). Pairs are on the CPU-side index device of `labels`.
    """
    empty = labels.new_empty(0)
    return make_memory_pairs(
        labels, dataset_index, empty, empty.clone(), max_nonmatch=max_nonmatch, generator=generator
    )


def make_memory_pairs(
    labels: torch.Tensor,
    dataset_index: torch.Tensor,
    memory_labels: torch.Tensor,
    memory_dataset_index: torch.Tensor,
    *,
    max_match: int | None = None,
    max_nonmatch: int | None = None,
    generator: torch.Generator | None = None,
) -> Pairs:
    """Pairs of a batch [n] with itself and with a memory of earlier rows [M] (cross-batch memory).

    Indices point into the pool ``cat([batch, memory])``: the first index is always a batch row (< n),
    the second a later batch row or a memory row (n + k). The rules are `make_pairs`'s: matching = equal
    labels, non-matching = other label within one dataset. With `max_match` / `max_nonmatch`, a uniform
    random subset of that many of each kind is kept. With an empty memory this is `make_pairs`.
    """
    n = labels.shape[0]
    pool_labels = torch.cat([labels, memory_labels])
    pool_datasets = torch.cat([dataset_index, memory_dataset_index])
    columns = torch.arange(pool_labels.shape[0], device=labels.device)
    later = columns[None, :] > torch.arange(n, device=labels.device)[:, None]
    same_label = labels[:, None] == pool_labels[None, :]
    same_dataset = dataset_index[:, None] == pool_datasets[None, :]
    match = (later & same_label).nonzero()
    nonmatch = (later & same_dataset & ~same_label).nonzero()
    return Pairs(
        match=_subset(match, max_match, generator), nonmatch=_subset(nonmatch, max_nonmatch, generator)
    )


def _subset(pairs: torch.Tensor, limit: int | None, generator: torch.Generator | None) -> torch.Tensor:
    if limit is None or pairs.shape[0] <= limit:
        return pairs
    keep = torch.randperm(pairs.shape[0], generator=generator)[:limit].to(pairs.device)
    return pairs[keep]


class PairMemory:
    """A first-in-first-out memory of the last `size` detached embeddings with their labels and datasets,
    so that pair losses see many matching pairs without identity-balanced batches (XBM, Wang et al. 2020).

    Deliberately not a module buffer: each DDP rank keeps its own memory (buffers would be broadcast from
    rank 0) and checkpoints do not carry it (a resumed run refills it within size / batch steps).
    """

    def __init__(self, size: int, dim: int) -> None:
        if size < 1:
            raise ValueError("PairMemory needs size >= 1")
        self.size, self.dim = size, dim
        self.features = torch.empty(0, dim)
        self.labels = torch.empty(0, dtype=torch.long)
        self.dataset_index = torch.empty(0, dtype=torch.long)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def push(self, features: torch.Tensor, labels: torch.Tensor, dataset_index: torch.Tensor) -> None:
        """Append a batch (detached), dropping the oldest rows beyond `size`."""
        self.features = torch.cat([self.features.to(features.device), features.detach()])[-self.size :]
        self.labels = torch.cat([self.labels.to(labels.device), labels.detach()])[-self.size :]
        self.dataset_index = torch.cat([self.dataset_index.to(labels.device), dataset_index.detach()])[
            -self.size :
        ]


def select_hard_pairs(
    z: torch.Tensor,
    centre: float,
    keep_fraction: float = 0.5,
    min_keep: int = 2,
    sigma: float | None = 1.0,
) -> torch.Tensor:
    """Indices of the hard rows of z [P, m]: those in the low-probability region of their target
    N(centre·1, sigma²·I), i.e. farther than sigma·√m from `centre`·1 (seed §[0047], FIG. 2), and at
    least the farthest `keep_fraction` (and `min_keep`) so the batch statistics keep enough samples.

    Keeping every pair that is not yet mapped onto its target matters early in training: while all
    outputs sit far from both targets, a fixed top fraction would keep the matching pairs with the
    largest z and the non-matching pairs with the smallest z, and pulling those towards their centres
    shrinks every input-dependent variation of z — ModelNet collapses to one constant between the two
    targets. `sigma=None` keeps exactly the top `keep_fraction`. Call once with the matching outputs and
    mu_m, once with the non-matching outputs and mu_n.
    """
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError("keep_fraction must lie in (0, 1]")
    distance = (z.detach() - centre).norm(dim=1)
    keep = max(min_keep, round(keep_fraction * z.shape[0]))
    if sigma is not None:
        outside = int((distance > sigma * z.shape[1] ** 0.5).sum())
        keep = max(keep, outside)
    return torch.topk(distance, min(z.shape[0], keep)).indices


def match_score(z: torch.Tensor, mu_m: float = 0.0) -> torch.Tensor:
    """Similarity score of pair outputs z [P, m]: −‖z − mu_m·1‖ (higher = more likely the same person)."""
    return -(z - mu_m).norm(dim=1)


def decide_match(z: torch.Tensor, threshold: float, mu_m: float = 0.0) -> torch.Tensor:
    """Boolean [P]: a match when z lies within `threshold` of the matching centre (threshold chosen on
    validation data, e.g. −verification_metrics(match_score(z)).threshold)."""
    return (z - mu_m).norm(dim=1) <= threshold


def four_way_flip_average(
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    model_net: ModelNet,
    images_a: torch.Tensor,
    images_b: torch.Tensor,
) -> torch.Tensor:
    """BioMetricNet-M: mean z over (a, b), (flip a, b), (a, flip b), (flip a, flip b); images [P, 3, H, W]."""
    feats_a, feats_a_flip = feature_fn(images_a), feature_fn(torch.flip(images_a, dims=[3]))
    feats_b, feats_b_flip = feature_fn(images_b), feature_fn(torch.flip(images_b, dims=[3]))
    return four_way_average(model_net, feats_a, feats_a_flip, feats_b, feats_b_flip)


def four_way_average(
    model_net: ModelNet,
    feats_a: torch.Tensor,
    feats_a_flip: torch.Tensor,
    feats_b: torch.Tensor,
    feats_b_flip: torch.Tensor,
) -> torch.Tensor:
    """`four_way_flip_average` from features already computed for the images and their flips."""
    outputs = [model_net(fa, fb) for fa in (feats_a, feats_a_flip) for fb in (feats_b, feats_b_flip)]
    return torch.stack(outputs).mean(dim=0)
