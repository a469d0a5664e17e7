"""On-device adaptation (seed 000): positive/negative gradients of the upper layers, accumulated per layer.

After a successful verification the loss ``1 - cos(upper(middle(x)), template)`` pulls the input's feature
toward the enrolled template; its gradient for the upper layers only is added to that layer's positive
container. For every positive, ``negatives_per_positive`` low-frequency noise images go through the
frozen lower part, and (optionally) stored middle features of other enrolled users are added; the loss
``relu(cos(upper(negative_middle), template) - negative_margin)`` pushes them away; those gradients
fill the negative containers. After ``positives_per_update`` positives the upper layers take
one step on the averaged containers and the caller re-extracts every template from the stored middle
features. Nothing here talks to the network: adapted weights never leave the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from facefleet.nn.backbones import Backbone


@dataclass(frozen=True)
class AdaptationConfig:
    """Defaults tuned on the synthetic drifting users of tests/terminal/test_adaptation.py."""

    positives_per_update: int = 4
    negatives_per_positive: int = 2
    learning_rate: float = 0.1
    negative_weight: float = 3.0
    negative_margin: float = 0.1
    # Stored middle features of *other* enrolled users used as extra negatives per positive (0 = noise only).
    enrolled_negatives_per_positive: int = 8
    seed: int = 0


class GradientContainers:
    """One running gradient sum per upper-layer parameter (the patent's per-layer gradient containers)."""

    def __init__(self, parameters: dict[str, nn.Parameter]) -> None:
        self.sums = {name: torch.zeros_like(p) for name, p in parameters.items()}
        self.count = 0

    def add(self, gradients: dict[str, torch.Tensor]) -> None:
        for name, gradient in gradients.items():
            self.sums[name] += gradient
        self.count += 1

    def mean(self, name: str) -> torch.Tensor:
        return self.sums[name] / max(self.count, 1)

    def reset(self) -> None:
        for tensor in self.sums.values():
            tensor.zero_()
        self.count = 0


class UpperLayerAdapter:
    """Accumulates positive and negative gradients for ``backbone``'s upper part and applies them."""

    def __init__(self, backbone: Backbone, config: AdaptationConfig | None = None) -> None:
        self.backbone = backbone.eval()  # single samples: BatchNorm must use its running statistics
        self.config = config or AdaptationConfig()
        upper_ids = {id(p) for p in backbone.upper_parameters()}
        self.parameters = {name: p for name, p in backbone.named_parameters() if id(p) in upper_ids}
        self.positive = GradientContainers(self.parameters)
        self.negative = GradientContainers(self.parameters)
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.updates = 0

    def _features(self, middle: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone.forward_upper(middle), dim=-1)

    def _gradients(self, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        names = list(self.parameters)
        grads = torch.autograd.grad(loss, [self.parameters[n] for n in names], allow_unused=True)
        return {
            n: (g if g is not None else torch.zeros_like(self.parameters[n]))
            for n, g in zip(names, grads, strict=True)
        }

    def observe_success(
        self, middle: torch.Tensor, template: torch.Tensor, impostor_middles: torch.Tensor | None = None
    ) -> bool:
        """Accumulate one positive (and its negatives); True when the upper layers were just updated.

        ``impostor_middles``: stored middle features of other enrolled users (optional extra negatives).
        """
        target = F.normalize(template.detach().reshape(1, -1), dim=-1)
        feature = self._features(middle.detach())
        self.positive.add(self._gradients((1 - (feature * target).sum(dim=-1)).mean()))
        self._accumulate_negatives(target, impostor_middles)
        if self.positive.count >= self.config.positives_per_update:
            self.apply_update()
            return True
        return False

    def _accumulate_negatives(self, target: torch.Tensor, impostor_middles: torch.Tensor | None) -> None:
        """Negatives in proportion to positives: noise through the frozen lower part + enrolled impostors."""
        parts = []
        if self.config.negatives_per_positive > 0:
            with torch.no_grad():
                parts.append(
                    self.backbone.forward_lower(self.generate_negatives(self.config.negatives_per_positive))
                )
        if (
            impostor_middles is not None
            and len(impostor_middles)
            and self.config.enrolled_negatives_per_positive
        ):
            pick = torch.randperm(len(impostor_middles), generator=self.generator)
            parts.append(impostor_middles[pick[: self.config.enrolled_negatives_per_positive]].detach())
        if not parts:
            return
        negative_middle = torch.cat(parts)
        similarity = (self._features(negative_middle) * target).sum(dim=-1)
        loss = F.relu(similarity - self.config.negative_margin).mean()
        self.negative.add(self._gradients(loss))

    def generate_negatives(self, count: int) -> torch.Tensor:
        """Low-frequency noise images in [-1, 1]: coarse random grids upsampled (images are mostly low
        frequency, so these land nearer the data than white noise and keep features from collapsing)."""
        size = self.backbone.input_size
        cells = int(torch.randint(3, 9, (1,), generator=self.generator))
        coarse = torch.rand((count, 3, cells, cells), generator=self.generator) * 2 - 1
        smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
        return (smooth + 0.1 * torch.randn(smooth.shape, generator=self.generator)).clamp(-1, 1)

    @torch.no_grad()
    def apply_update(self) -> None:
        """One step on the averaged containers, then empty them."""
        lr, weight = self.config.learning_rate, self.config.negative_weight
        for name, parameter in self.parameters.items():
            step = self.positive.mean(name)
            if self.negative.count:
                step = step + weight * self.negative.mean(name)
            parameter.sub_(lr * step)
        self.positive.reset()
        self.negative.reset()
        self.updates += 1
