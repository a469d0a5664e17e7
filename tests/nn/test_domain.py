"""Gradient reversal and the two-stage dataset-classifier schedule."""

from __future__ import annotations

import math

import torch

from facefleet.nn.domain import DatasetClassifier, domain_loss, grad_reverse, in_reversal_stage
from facefleet.nn.schedule import warmup_cosine_factor


def test_grad_reverse_is_identity_forward_and_minus_lambda_backward() -> None:
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(5, 4, dtype=torch.float64)
    out = grad_reverse(x, 0.3)
    assert torch.equal(out, x)
    (plain,) = torch.autograd.grad((x * upstream).sum(), x)
    (reversed_grad,) = torch.autograd.grad((out * upstream).sum(), x)
    assert torch.equal(reversed_grad, -0.3 * plain)


def test_stage_one_sends_no_gradient_into_embeddings_but_trains_the_classifier() -> None:
    torch.manual_seed(0)
    classifier = DatasetClassifier(8, 3)
    embeddings = torch.randn(12, 8, requires_grad=True)
    dataset_index = torch.arange(12) % 3
    loss, accuracy = domain_loss(classifier, embeddings, dataset_index, step=5, switch_step=10, lambd=0.1)
    loss.backward()
    assert embeddings.grad is None
    assert classifier.linear.weight.grad is not None and classifier.linear.weight.grad.abs().sum() > 0
    assert 0.0 <= float(accuracy) <= 1.0 and not accuracy.requires_grad


def test_stage_two_reverses_the_classifier_gradient() -> None:
    torch.manual_seed(0)
    classifier = DatasetClassifier(8, 3)
    embeddings = torch.randn(12, 8, requires_grad=True)
    dataset_index = torch.arange(12) % 3
    loss, _ = domain_loss(classifier, embeddings, dataset_index, step=10, switch_step=10, lambd=0.25)
    (reversed_grad,) = torch.autograd.grad(loss, embeddings)
    plain = torch.nn.functional.cross_entropy(classifier(embeddings), dataset_index)
    (plain_grad,) = torch.autograd.grad(plain, embeddings)
    assert torch.allclose(reversed_grad, -0.25 * plain_grad, atol=1e-7)
    assert in_reversal_stage(10, 10) and not in_reversal_stage(9, 10) and not in_reversal_stage(10**6, None)


def test_warmup_cosine_factor() -> None:
    assert warmup_cosine_factor(0, total_steps=100, warmup_steps=10) == 0.1
    assert warmup_cosine_factor(9, total_steps=100, warmup_steps=10) == 1.0
    assert warmup_cosine_factor(10, total_steps=100, warmup_steps=10) == 1.0
    assert abs(warmup_cosine_factor(55, total_steps=100, warmup_steps=10) - 0.5) < 1e-12
    assert abs(warmup_cosine_factor(100, total_steps=100, warmup_steps=10, min_ratio=0.01) - 0.01) < 1e-12


def test_reversal_lambda_step_and_ramp_schedules() -> None:
    from facefleet.nn.domain import reversal_lambda

    assert reversal_lambda(9, 10, 100, 0.5) == 0.0  # stage 1
    assert reversal_lambda(50, None, 100, 0.5, "ramp") == 0.0  # no reversal
    assert reversal_lambda(10, 10, 100, 0.5, "step") == 0.5
    assert reversal_lambda(99, 10, 100, 0.5, "step") == 0.5
    ramp = [reversal_lambda(s, 10, 100, 0.5, "ramp") for s in range(10, 101)]
    assert ramp[0] == 0.0  # starts from nothing at the switch
    assert all(a < b for a, b in zip(ramp, ramp[1:], strict=False))  # rises every step
    assert abs(ramp[-1] - 0.5 * (2 / (1 + math.exp(-10)) - 1)) < 1e-12  # ~lambda at the end
    assert abs(ramp[45] - 0.5 * (2 / (1 + math.exp(-5)) - 1)) < 1e-12  # halfway: p = 0.5


def test_dataset_classifier_with_a_hidden_layer() -> None:
    torch.manual_seed(0)
    linear, deep = DatasetClassifier(8, 3), DatasetClassifier(8, 3, hidden=16)
    embeddings = torch.randn(5, 8)
    assert linear(embeddings).shape == deep(embeddings).shape == (5, 3)
    assert sum(p.numel() for p in linear.parameters()) == 8 * 3 + 3
    assert sum(p.numel() for p in deep.parameters()) == 8 * 16 + 16 + 16 * 3 + 3
    # it still reads the normalised embedding: the length of the embedding changes nothing
    assert torch.allclose(deep(embeddings), deep(7.0 * embeddings), atol=1e-6)
    # XOR-like dataset labels a linear classifier cannot separate, the hidden layer can
    points = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]]).repeat(8, 1)
    labels = torch.tensor([0, 0, 1, 1]).repeat(8)

    def fitted_accuracy(classifier: DatasetClassifier) -> float:
        optimizer = torch.optim.Adam(classifier.parameters(), lr=0.05)
        for _ in range(300):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(classifier(points), labels).backward()
            optimizer.step()
        return float((classifier(points).argmax(1) == labels).float().mean())

    torch.manual_seed(0)
    assert fitted_accuracy(DatasetClassifier(2, 2)) <= 0.75
    torch.manual_seed(0)
    assert fitted_accuracy(DatasetClassifier(2, 2, hidden=16)) == 1.0
