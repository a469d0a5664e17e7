"""Gradient reversal and the two-stage dataset-classifier schedule."""

from __future__ import annotations

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
