"""Learning test: K = 3 synthetic face datasets with overlapping identities, a tiny backbone on the CPU.

Each person is a smooth random pattern; each dataset adds its own colour cast (the "domain") and holds
32 of 48 training people, so every person appears in two datasets under two different labels. Claims
checked (design.md §5.2-5.3): unlike the naive combination (plain softmax over all labels), the
dataset-aware head does not teach the embedding the dataset's colour cast, and it verifies held-out people
no worse (better on average over seeds; the per-seed margins are beside the assertions); with gradient
reversal in stage 2 the dataset classifier's accuracy on the embeddings falls toward 1/K.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from facefleet.nn.backbones import get_backbone
from facefleet.nn.domain import DatasetClassifier, domain_loss
from facefleet.nn.heads import DatasetAwareMarginHead
from facefleet.nn.verification import verification_metrics

SIZE, TRAIN_PEOPLE, HELD_OUT_PEOPLE, K = 32, 48, 32, 3
MEMBERS = [list(range(0, 32)), list(range(16, 48)), list(range(0, 16)) + list(range(32, 48))]
STEPS, PER_DATASET = 240, 32
EVAL_PAIRS = 4000  # evaluation is cheap next to training: enough pairs that it adds little noise


@dataclass
class World:
    prototypes: torch.Tensor  # [people, 3, SIZE, SIZE]
    styles: torch.Tensor  # [K, 3, 1, 1]


def make_world(seed: int) -> World:
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(TRAIN_PEOPLE + HELD_OUT_PEOPLE, 3, 6, 6, generator=gen)
    prototypes = F.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    styles = torch.randn(K, 3, 1, 1, generator=gen) * 0.8
    return World(prototypes, styles)


def render(world: World, people: torch.Tensor, styles: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    noise = torch.randn(people.numel(), 3, SIZE, SIZE, generator=gen) * 0.6
    gain = 1.0 + 0.2 * torch.randn(people.numel(), 1, 1, 1, generator=gen)
    return world.prototypes[people] * gain + world.styles[styles] + noise


def training_batch(world: World, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images, labels, datasets = [], [], []
    for k, members in enumerate(MEMBERS):
        local = torch.randint(0, len(members), (PER_DATASET,), generator=gen)
        people = torch.tensor(members)[local]
        images.append(render(world, people, torch.full_like(people, k), gen))
        labels.append(local + 32 * k)
        datasets.append(torch.full_like(local, k))
    return torch.cat(images), torch.cat(labels), torch.cat(datasets)


def held_out_pairs(world: World, seed: int, pairs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``pairs`` pairs of unseen people (half same), each image in a random dataset's style."""
    gen = torch.Generator().manual_seed(seed)
    first = torch.randint(TRAIN_PEOPLE, TRAIN_PEOPLE + HELD_OUT_PEOPLE, (pairs,), generator=gen)
    other = torch.randint(TRAIN_PEOPLE, TRAIN_PEOPLE + HELD_OUT_PEOPLE - 1, (pairs,), generator=gen)
    other = other + (other >= first).long()
    is_same = torch.arange(pairs) % 2 == 0
    second = torch.where(is_same, first, other)
    images_a = render(world, first, torch.randint(0, K, (pairs,), generator=gen), gen)
    images_b = render(world, second, torch.randint(0, K, (pairs,), generator=gen), gen)
    return images_a, images_b, is_same


def held_out_metrics(world: World, net: torch.nn.Module, seed: int, pairs: int = EVAL_PAIRS):
    """Verification metrics (accuracy, AUC, ...) of ``net`` on held-out pairs."""
    images_a, images_b, is_same = held_out_pairs(world, seed, pairs)
    net.eval()
    with torch.no_grad():
        scores = F.cosine_similarity(net(images_a), net(images_b))
    net.train()
    return verification_metrics(scores, is_same)


def style_agreement(world: World, net: torch.nn.Module, seed: int, images: int = 300) -> float:
    """Mean cosine between the embeddings of one held-out image rendered in two different datasets' styles
    (same person, same noise): 1.0 when the embedding ignores the dataset's colour cast."""
    gen = torch.Generator().manual_seed(seed)
    people = torch.randint(TRAIN_PEOPLE, TRAIN_PEOPLE + HELD_OUT_PEOPLE, (images,), generator=gen)
    style_a = torch.randint(0, K, (images,), generator=gen)
    style_b = (style_a + torch.randint(1, K, (images,), generator=gen)) % K
    noise = torch.randn(images, 3, SIZE, SIZE, generator=gen) * 0.6
    base = world.prototypes[people] + noise
    net.eval()
    with torch.no_grad():
        agreement = F.cosine_similarity(net(base + world.styles[style_a]), net(base + world.styles[style_b]))
    net.train()
    return float(agreement.mean())


@dataclass
class Trained:
    net: torch.nn.Module
    stage1_domain_accuracy: float  # the dataset classifier's accuracy, last 20 steps of stage 1
    final_domain_accuracy: float  # ... last 20 steps of training


def train(world: World, *, crossing_p: float, switch_step: int | None, lambd: float, seed: int) -> Trained:
    torch.manual_seed(seed)
    net = get_backbone("tiny", embedding_dim=32, input_size=SIZE)
    head = DatasetAwareMarginHead(32, [32] * K, "cosface", s=16.0, m3=0.2, crossing_p=crossing_p)
    classifier = DatasetClassifier(32, K)
    optimizer = torch.optim.SGD(
        [*net.parameters(), *head.parameters(), *classifier.parameters()],
        lr=0.1,
        momentum=0.9,
        weight_decay=5e-4,
    )
    gen = torch.Generator().manual_seed(seed + 1)
    domain_accuracy: list[float] = []
    for step in range(STEPS):
        images, labels, datasets = training_batch(world, gen)
        embeddings = net(images)
        loss = head(embeddings, labels, datasets)
        d_loss, d_accuracy = domain_loss(
            classifier, embeddings, datasets, step=step, switch_step=switch_step, lambd=lambd
        )
        optimizer.zero_grad()
        (loss + d_loss).backward()
        optimizer.step()
        domain_accuracy.append(float(d_accuracy))
    switch = switch_step or STEPS
    stage1 = sum(domain_accuracy[switch - 20 : switch]) / 20
    final = sum(domain_accuracy[-20:]) / 20
    return Trained(net, stage1, final)


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~60 s alone; several times that on a busy shared machine
def test_dataset_aware_beats_naive_and_reversal_hides_the_dataset() -> None:
    torch.set_num_threads(1)
    world = make_world(seed=0)
    aware = train(world, crossing_p=0.0, switch_step=None, lambd=0.0, seed=1).net
    naive = train(world, crossing_p=1.0, switch_step=None, lambd=0.0, seed=1).net
    reversal = train(world, crossing_p=0.0, switch_step=STEPS // 2, lambd=0.1, seed=1)
    aware_auc, naive_auc = (held_out_metrics(world, net, seed=99).auc for net in (aware, naive))
    aware_style, naive_style = (style_agreement(world, net, seed=98) for net in (aware, naive))
    before, after = reversal.stage1_domain_accuracy, reversal.final_domain_accuracy
    print(
        f"\nheld-out verification AUC: dataset-aware {aware_auc:.3f}, naive softmax {naive_auc:.3f}; "
        f"style agreement: dataset-aware {aware_style:.3f}, naive {naive_style:.3f}; dataset-classifier "
        f"accuracy end of stage 1 {before:.3f}, end of stage 2 {after:.3f} (1/K = {1 / K:.3f})"
    )
    # Measured by scripts/spreads/learning.py over 5 seeds (world s, training s + 1; this test is s = 0),
    # native AVX512 and ATEN_CPU_CAPABILITY=default. The capability alone moves s = 0's AUCs by ~0.006:
    # rounding changes the training trajectory, so every bound must hold across seeds, not just at s = 0.
    #
    # The naive combination learns each person's two labels apart, so its embedding encodes the dataset's
    # colour cast; the dataset-aware head has no such pressure. aware - naive style agreement, s = 0..4:
    # native 0.160, 0.251, 0.128, 0.301, 0.116; default 0.136, 0.250, 0.156, 0.362, 0.089.
    assert aware_style - naive_style > 0.04
    # Held-out verification AUC (4000 pairs), aware - naive: native 0.088, 0.081, 0.007, 0.160, 0.034;
    # default 0.087, 0.078, 0.006, 0.190, 0.049. Better on average, but one seed's advantage can be ~0,
    # so per run the test asserts "not worse" with margin (accuracy on 600 pairs, the old measure, ranged
    # -0.015 .. 0.110: the old `aware > naive` failed on native seed 4 and default seed 2).
    assert aware_auc > naive_auc - 0.03
    # Gradient reversal in stage 2: the dataset classifier's accuracy falls from its stage-1 level toward
    # 1/K. before - after: native 0.62, 0.24, 0.63, 0.26, 0.58; default 0.62, 0.23, 0.63, 0.27, 0.60.
    # after: 0.289 .. 0.573 (the old bound 1/K + 0.15 = 0.483 failed on seed 3 both ways). Share of the
    # above-chance accuracy left, (after - 1/K) / (before - 1/K): native -0.19 .. 0.48, default -0.14 .. 0.45.
    assert after < before - 0.1
    assert after - 1 / K < 0.6 * (before - 1 / K)
