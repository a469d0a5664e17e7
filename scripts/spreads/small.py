"""Measures, over seeds, what the cheaper threshold assertions depend on (run once per CPU capability).

    ATEN_CPU_CAPABILITY=default PYTHONPATH=. python scripts/spreads/small.py

Prints one JSON line per quantity: {name, capability, seed -> value}.
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from facefleet.nn.biometricnet import ModelNet
from facefleet.nn.heads import sample_crossing_positions
from facefleet.terminal.runtime import preprocess
from tests.terminal.model_factory import tiny_backbone, trained_backbone
from tests.terminal.synthetic_faces import face

CAPABILITY = torch.backends.cpu.get_cpu_capability()


def emit(name: str, values: dict[int, float]) -> None:
    print(json.dumps({"name": name, "capability": CAPABILITY, "values": values}), flush=True)


def scores(net: torch.nn.Module, enrolled: list, probes: list) -> list[float]:
    """The terminal's score: the best dot product of unit embeddings against the enrolled templates."""

    def embed(images: list) -> torch.Tensor:
        batch = torch.from_numpy(np.stack([preprocess(image, 32) for image in images]))
        with torch.no_grad():
            return torch.nn.functional.normalize(net.eval()(batch), dim=1)

    templates = embed(enrolled)
    return [float((templates @ e).max()) for e in embed(probes)]


def rollout_margin() -> None:
    """test_terminal_rollout: an untrained tiny_backbone(seed) scores alice above an impostor."""
    values = {}
    for seed in range(10):
        genuine, impostor = scores(tiny_backbone(seed), [face(1, 0), face(1, 1)], [face(1, 7), face(2, 0)])
        values[seed] = genuine - impostor
    emit("rollout: genuine - impostor score (untrained tiny_backbone(seed))", values)


def demo_scores() -> None:
    """test_terminal_demo: trained_backbone(seed, 32 identities, 100 steps), threshold 0.6."""
    genuine, impostor = {}, {}
    for seed in range(5):
        net = trained_backbone(seed, identities=32, steps=100)
        genuine[seed], impostor[seed] = scores(net, [face(1, 0), face(1, 1)], [face(1, 5), face(2, 0)])
    emit("demo: genuine score face(1,5)", genuine)
    emit("demo: impostor score face(2,0)", impostor)


def modelnet_ratio() -> None:
    """test_biometricnet: he_std / default_std of ModelNet's output at init."""
    values = {}
    for seed in range(10):
        torch.manual_seed(seed)
        net = ModelNet(feature_dim=32, out_dim=1, layers=3, keep_prob=1.0, output_init=20.0).eval()
        features = torch.nn.functional.normalize(torch.randn(256, 32), dim=1)
        he = net(features[:128], features[128:]).std().item()
        for module in net.net:
            if isinstance(module, torch.nn.Linear):
                module.reset_parameters()
        values[seed] = he / net(features[:128], features[128:]).std().item()
    emit("biometricnet: he_std / default_std at init", values)


def crossing_rates() -> None:
    """test_heads: Bernoulli(p) crossing positions: |mean rate - p| and max |rate - p| / sd."""
    for p in (0.02, 0.3, 0.8):
        mean_err, max_z = {}, {}
        for seed in range(5):
            gen = torch.Generator().manual_seed(seed)
            rows, cols, trials = 8, 50, 3000
            counts = torch.zeros(rows * cols)
            for _ in range(trials):
                counts[sample_crossing_positions(rows, cols, p, gen)] += 1
            rate = counts / trials
            mean_err[seed] = abs(rate.mean().item() - p)
            max_z[seed] = (rate - p).abs().max().item() / math.sqrt(p * (1 - p) / trials)
        emit(f"heads: |mean rate - p|, p={p}", mean_err)
        emit(f"heads: max |rate - p| / sd, p={p}", max_z)


def head_inclusion() -> None:
    """test_heads: the share of other-dataset classes one sample's loss reaches, p = 0.05, over 40 calls."""
    from tests.nn.test_heads import grads, make_head

    values = {}
    for seed in range(5):
        torch.manual_seed(seed)
        p, other_classes = 0.05, 4000
        head = make_head([3, other_classes], 4, "softmax", p=p)
        x = torch.randn(1, 4, dtype=torch.float64)
        included = []
        for _ in range(40):
            (weight_grad,) = grads(head(x, torch.tensor([1]), torch.tensor([0])), [head.weight])
            included.append((weight_grad[3:].abs().sum(dim=1) > 0).double().mean().item())
        values[seed] = abs(sum(included) / len(included) - p)
    emit("heads: |included share - p|, p=0.05", values)


if __name__ == "__main__":
    import sys

    torch.set_num_threads(1)
    if sys.argv[1:] == ["inclusion"]:
        head_inclusion()
        raise SystemExit
    head_inclusion()
    rollout_margin()
    modelnet_ratio()
    crossing_rates()
    demo_scores()
