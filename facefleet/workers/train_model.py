"""Assembles the training model from `facefleet.nn` parts, and its optimiser and learning-rate schedule."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facefleet.nn.backbones import get_backbone
from facefleet.nn.biometricnet import (
    ModelNet,
    PairMemory,
    Pairs,
    biometricnet_kl_loss,
    make_memory_pairs,
    make_pairs,
    scale_grad,
    select_hard_pairs,
)
from facefleet.nn.domain import DatasetClassifier, domain_loss, in_reversal_stage, reversal_lambda
from facefleet.nn.heads import DatasetAwareMarginHead, MarginHeadOptions
from facefleet.nn.schedule import warmup_cosine_factor
from facefleet.platform.runs.schemas import TrainingConfig
from facefleet.workers.partial_fc import DistributedMarginHead

PAIR_STREAM = 1_000_003  # offset of the pair stage's own random streams from the run's seed


class FaceTrainingModel(nn.Module):
    """G_f (backbone) + G_y (dataset-aware head) + G_d (dataset classifier) + optional ModelNet, one module
    so that DDP synchronises every gradient. ``forward`` returns the named losses of one batch."""

    def __init__(
        self,
        config: TrainingConfig,
        classes_per_dataset: list[int],
        total_steps: int,
        sharded_head: bool = False,
    ) -> None:
        super().__init__()
        self.config = config
        self.backbone = get_backbone(
            config.backbone, embedding_dim=config.embedding_dim, input_size=config.input_size
        )
        dim = int(self.backbone.embedding_dim)
        head = config.head
        self.sharded_head = sharded_head
        self.head: nn.Module
        margin: MarginHeadOptions = {
            "kind": head.kind,
            "s": head.s,
            "m1": head.m1,
            "m2": head.m2,
            "m3": head.m3,
            "crossing_p": head.crossing_p,
        }
        if sharded_head:
            # the worker's slice of the classes (Partial FC); checkpoints still hold the full matrix
            self.head = DistributedMarginHead(
                dim, classes_per_dataset, sample_rate=head.sample_rate, seed=config.seed, **margin
            )
        else:
            self.head = DatasetAwareMarginHead(dim, classes_per_dataset, **margin)
        # With K >= 2 the classifier always trains (on detached embeddings without reversal), so its
        # accuracy is logged for baselines too; reversal only decides whether its gradient reaches G_f.
        self.dataset_classifier = (
            DatasetClassifier(dim, len(classes_per_dataset), hidden=config.reversal.classifier_hidden)
            if len(classes_per_dataset) > 1
            else None
        )
        self.total_steps = total_steps
        self.switch_step = config.switch_step(total_steps) if config.reversal.enabled else None
        bio = config.biometric
        self.model_net = (
            ModelNet(
                dim,
                bio.output_dim,
                bio.layers,
                bio.keep_prob,
                output_init=(bio.mu_match + bio.mu_nonmatch) / 2,  # start between the two targets
                pair_features=bio.pair_features,
                seed=config.seed + PAIR_STREAM,  # its own draws: the rest of training draws as without it
            )
            if bio.enabled
            else None
        )
        self.pair_memory = (
            PairMemory(bio.memory_size, dim) if bio.enabled and bio.pair_source == "memory" else None
        )
        self.pair_generator = torch.Generator().manual_seed(config.seed + PAIR_STREAM)  # pair subsets

    def stage(self, step: int) -> int:
        return 2 if in_reversal_stage(step, self.switch_step) else 1

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, dataset_index: torch.Tensor, step: int
    ) -> dict[str, torch.Tensor]:
        embeddings = self.backbone(images)
        if self.sharded_head:
            identity = self.head(embeddings.float(), labels, dataset_index, step)
        else:
            identity = self.head(embeddings.float(), labels, dataset_index)
        losses = {"identity_loss": identity}
        total = identity
        if self.dataset_classifier is not None:
            d_loss, accuracy = domain_loss(
                self.dataset_classifier,
                embeddings.float(),
                dataset_index,
                step=step,
                switch_step=self.switch_step,
                lambd=reversal_lambda(
                    step,
                    self.switch_step,
                    self.total_steps,
                    self.config.reversal.lambda_,
                    self.config.reversal.schedule,
                ),
            )
            losses["domain_loss"], losses["domain_accuracy"] = d_loss, accuracy
            total = total + d_loss
        if self.model_net is not None:
            features = scale_grad(embeddings.float(), self.config.biometric.feature_grad)
            kl = self._pair_loss(F.normalize(features, dim=1), labels, dataset_index)
            losses["kl_loss"] = kl
            total = total + self.config.biometric.alpha * kl
        losses["loss"] = total
        return losses

    def _pair_loss(
        self, features: torch.Tensor, labels: torch.Tensor, dataset_index: torch.Tensor
    ) -> torch.Tensor:
        assert self.model_net is not None
        bio = self.config.biometric
        limit = max(2, 4 * labels.shape[0])
        pairs: Pairs
        if self.pair_memory is None:
            pool = features
            pairs = make_pairs(labels, dataset_index, max_nonmatch=limit, generator=self.pair_generator)
        else:
            # Ordinary batches hold few pairs of one person: pair them with the last memory_size
            # embeddings too (detached; the KL gradient reaches only this batch's side of a pair).
            memory = self.pair_memory
            pool = torch.cat([features, memory.features.to(features.device, features.dtype)])
            pairs = make_memory_pairs(
                labels,
                dataset_index,
                memory.labels,
                memory.dataset_index,
                max_match=limit,
                max_nonmatch=limit,
                generator=self.pair_generator,
            )
            if self.training:
                memory.push(features.detach(), labels, dataset_index)
        if pairs.match.shape[0] < 2 or pairs.nonmatch.shape[0] < 2:
            # Keep every parameter in the graph so DDP's gradient buckets stay identical on all ranks.
            return sum(p.sum() for p in self.model_net.parameters()) * 0.0  # type: ignore[return-value]
        z_match = self.model_net(pool[pairs.match[:, 0]], pool[pairs.match[:, 1]])
        z_non = self.model_net(pool[pairs.nonmatch[:, 0]], pool[pairs.nonmatch[:, 1]])
        # Hard mining: every pair outside its target's 1-sigma region, at least the farthest hard_fraction.
        z_match = z_match[select_hard_pairs(z_match, bio.mu_match, bio.hard_fraction, sigma=bio.sigma)]
        z_non = z_non[select_hard_pairs(z_non, bio.mu_nonmatch, bio.hard_fraction, sigma=bio.sigma)]
        return biometricnet_kl_loss(z_match, z_non, bio.mu_match, bio.mu_nonmatch, bio.sigma, bio.sigma)


def build_training_model(
    config: TrainingConfig, classes_per_dataset: list[int], total_steps: int, sharded_head: bool = False
) -> FaceTrainingModel:
    """The training model; `sharded_head` (inside a worker group only) holds this worker's classes."""
    return FaceTrainingModel(config, classes_per_dataset, total_steps, sharded_head)


def lr_factor(config: TrainingConfig, step: int, total_steps: int) -> float:
    """Multiplier of the base learning rate at ``step`` (linear warm-up, then the configured decay)."""
    schedule = config.schedule
    if schedule.kind == "cosine":
        return warmup_cosine_factor(step, total_steps=total_steps, warmup_steps=schedule.warmup_steps)
    if schedule.warmup_steps and step < schedule.warmup_steps:
        return (step + 1) / schedule.warmup_steps
    progress = min(1.0, (step - schedule.warmup_steps) / max(1, total_steps - schedule.warmup_steps))
    if schedule.kind == "step":
        return schedule.step_gamma ** sum(progress >= milestone for milestone in schedule.step_milestones)
    return 1.0


def build_optimizer(
    config: TrainingConfig, model: nn.Module, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    opt = config.optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer: torch.optim.Optimizer
    if opt.name == "sgd":
        optimizer = torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=opt.lr, weight_decay=opt.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(config, step, total_steps)
    )
    return optimizer, scheduler
