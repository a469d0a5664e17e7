"""On-device adaptation (seed 000): positive/negative gradients of the upper layers, accumulated per layer.

After a successful verification the loss ``1 - cos(upper(middle(x)), template)`` pulls the input's feature
toward the enrolled template; its gradient for the upper layers only is added to that layer's positive
container. For every positive, negatives go through the same upper part: low-frequency noise images through
the frozen lower part, and stored middle features of other enrolled users (only those the guard's probe does
not hold out); the loss ``relu(cos(upper(negative_middle), template) - negative_margin)`` pushes them away
and fills the negative containers. How many negatives and how hard they push follows the guard's probe
(``pressure``: more when impostor scores creep up or an update was refused).

After ``positives_per_update`` positives, ``try_update`` takes one step on the averaged containers, pulls
the weights back inside ``max_relative_drift`` of the shipped ones, and asks the guard; a refused step is
undone exactly (the previous upper part is kept until the new one passes). The caller then re-extracts
every template from the stored middle features. Nothing here talks to the network or touches files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from facefleet.nn.backbones import Backbone
from facefleet.terminal.guard import GuardDecision, ProbeReport, smooth_noise


@dataclass(frozen=True)
class AdaptationConfig:
    """Defaults measured on the synthetic drifting users of tests/terminal/test_adaptation.py (5 model seeds,
    AVX2 and ATEN_CPU_CAPABILITY=default) and on real faces in bench/adaptation.py."""

    positives_per_update: int = 4
    negatives_per_positive: int = 2
    learning_rate: float = 0.1
    negative_weight: float = 3.0
    # Without a threshold (``observe_success(threshold=None)``), negatives are pushed below this cosine;
    # with the card's threshold they are pushed below ``threshold - negative_gap`` (only the ones that come
    # near the door; pushing every impostor apart spreads the genuine users too).
    negative_margin: float = 0.1
    negative_gap: float = 0.2
    # Stored middle features of *other* enrolled users used as extra negatives per positive (0 = noise only).
    enrolled_negatives_per_positive: int = 8
    # Which accepted inputs become positives: the score must clear the threshold by ``positive_margin`` and
    # beat every other enrolled user's best score by ``identification_margin`` (a second check, so a
    # borderline accept, which is where impostors are accepted, never trains the model).
    positive_margin: float = 0.02
    identification_margin: float = 0.05
    # ||upper - shipped upper|| / ||shipped upper|| never exceeds this (a step beyond is scaled back).
    max_relative_drift: float = 0.5
    # Negatives' count and weight are multiplied by (1 + pressure); pressure follows the probe.
    max_pressure: float = 3.0
    # A step the guard refuses is retried at half the size this many times before it is rolled back.
    backtracks: int = 6
    # False: only weight tensors adapt (biases and norm scales move every embedding alike).
    adapt_biases_and_norms: bool = True
    seed: int = 0


# The seed's method as filed: every accepted input becomes a positive (what the guard-off runs compare with).
SEED_METHOD = AdaptationConfig(positive_margin=0.0, identification_margin=float("-inf"))


@dataclass(frozen=True)
class UpdateOutcome:
    applied: bool
    reason: str
    relative_drift: float
    decision: GuardDecision | None


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
    """Accumulates positive and negative gradients for ``backbone``'s upper part and applies them.

    ``shipped``: the upper parameters as the platform shipped them (drift is measured from these); by
    default the backbone's parameters when the adapter is created.
    """

    def __init__(
        self,
        backbone: Backbone,
        config: AdaptationConfig | None = None,
        shipped: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.backbone = backbone.eval()  # single samples: BatchNorm must use its running statistics
        self.config = config or AdaptationConfig()
        upper_ids = {id(p) for p in backbone.upper_parameters()}
        self.parameters = {
            name: p
            for name, p in backbone.named_parameters()
            if id(p) in upper_ids and (self.config.adapt_biases_and_norms or p.dim() > 1)
        }
        if shipped is None:
            shipped = {name: p.detach().clone() for name, p in self.parameters.items()}
        missing = set(self.parameters) - set(shipped)
        if missing:
            raise ValueError(f"shipped weights lack upper parameters {sorted(missing)}")
        self.shipped = {name: shipped[name].detach().clone() for name in self.parameters}
        self.positive = GradientContainers(self.parameters)
        self.negative = GradientContainers(self.parameters)
        self.generator = torch.Generator().manual_seed(self.config.seed)
        # this update's positives: (middle, the user's own stored middles or None, fixed matched template)
        self.batch: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = []
        self.pressure = 0.0
        self.updates = 0
        self.rejected = 0
        self._refused_in_a_row = 0

    # ---- accumulating
    def _features(self, middle: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone.forward_upper(middle), dim=-1)

    def _gradients(self, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        names = list(self.parameters)
        grads = torch.autograd.grad(loss, [self.parameters[n] for n in names], allow_unused=True)
        return {
            n: (g if g is not None else torch.zeros_like(self.parameters[n]))
            for n, g in zip(names, grads, strict=True)
        }

    @property
    def ready(self) -> bool:
        return self.positive.count >= self.config.positives_per_update

    def qualifies(self, score: float, threshold: float, best_other: float | None) -> bool:
        """Whether an accepted input is confidently genuine enough to become a positive."""
        if score < threshold + self.config.positive_margin:
            return False
        return best_other is None or best_other <= score - self.config.identification_margin

    def _target(
        self, feature: torch.Tensor, own: torch.Tensor | None, fallback: torch.Tensor
    ) -> torch.Tensor:
        """The user's template as it would be re-extracted under the current weights (the closest of the
        user's own stored middles, with gradient: the loss is the verification score itself); the fixed
        matched template when the user has no stored middle the update may use."""
        if own is None:
            return fallback
        templates = self._features(own)
        best = int((templates.detach() @ feature.detach().T).flatten().argmax())
        return templates[best : best + 1]

    def observe_success(
        self,
        middle: torch.Tensor,
        template: torch.Tensor,
        impostor_middles: torch.Tensor | None = None,
        *,
        own_middles: torch.Tensor | None = None,
        threshold: float | None = None,
    ) -> bool:
        """Accumulate one positive (and its negatives); True when enough are there for ``try_update``.

        ``impostor_middles``: stored middle features of other enrolled users that the probe does not hold out.
        ``own_middles``: the user's own such features (the positive is pulled toward their re-extracted
        template; without them toward the fixed ``template``). ``threshold``: the card's, for the negatives.
        """
        x = middle.detach()
        own = own_middles.detach() if own_middles is not None and len(own_middles) else None
        fallback = F.normalize(template.detach().reshape(1, -1), dim=-1)
        self.batch.append((x, own, fallback))
        feature = self._features(x)
        target = self._target(feature, own, fallback)
        self.positive.add(self._gradients((1 - (feature * target).sum(dim=-1)).mean()))
        self._accumulate_negatives(x, own, fallback, impostor_middles, threshold)
        return self.ready

    @torch.no_grad()
    def positive_score(self) -> float | None:
        """Mean score of this update's positives against their users' templates as the current weights
        would re-extract them (what the update is for)."""
        if not self.batch:
            return None
        total = 0.0
        for x, own, fallback in self.batch:
            feature = self._features(x)
            total += float((feature * self._target(feature, own, fallback)).sum())
        return total / len(self.batch)

    def negative_counts(self) -> tuple[int, int]:
        """(noise, enrolled) negatives per positive at the current pressure."""
        scale = 1.0 + self.pressure
        return (
            round(self.config.negatives_per_positive * scale),
            round(self.config.enrolled_negatives_per_positive * scale),
        )

    def _accumulate_negatives(
        self,
        x: torch.Tensor,
        own: torch.Tensor | None,
        fallback: torch.Tensor,
        impostor_middles: torch.Tensor | None,
        threshold: float | None,
    ) -> None:
        """Negatives in proportion to positives: noise through the frozen lower part + enrolled impostors,
        kept away from both the positive input and its user's template (hinge below the door)."""
        noise, enrolled = self.negative_counts()
        parts = []
        if noise > 0:
            with torch.no_grad():
                parts.append(self.backbone.forward_lower(self.generate_negatives(noise)))
        if impostor_middles is not None and len(impostor_middles) and enrolled:
            pick = torch.randperm(len(impostor_middles), generator=self.generator)
            parts.append(impostor_middles[pick[:enrolled]].detach())
        if not parts:
            return
        negatives = self._features(torch.cat(parts))
        feature = self._features(x)
        anchors = torch.cat([feature, self._target(feature, own, fallback)])
        similarity = negatives @ anchors.T
        floor = self.config.negative_margin if threshold is None else threshold - self.config.negative_gap
        loss = F.relu(similarity - floor).mean()
        self.negative.add(self._gradients(loss))

    def generate_negatives(self, count: int) -> torch.Tensor:
        """Low-frequency noise images in [-1, 1] from the adapter's own seed (never the probe's)."""
        return smooth_noise(count, self.backbone.input_size, self.generator)

    # ---- updating
    def relative_drift(self) -> float:
        """||upper - shipped|| / ||shipped|| over all upper parameters."""
        delta = sum(float((p.detach() - self.shipped[n]).pow(2).sum()) for n, p in self.parameters.items())
        norm = sum(float(w.pow(2).sum()) for w in self.shipped.values())
        return (delta / max(norm, 1e-12)) ** 0.5

    @torch.no_grad()
    def _bound_drift(self) -> float:
        """Scale the difference from the shipped weights back to ``max_relative_drift``."""
        drift = self.relative_drift()
        limit = self.config.max_relative_drift
        if drift > limit:
            scale = limit / drift
            for name, parameter in self.parameters.items():
                shipped = self.shipped[name]
                parameter.copy_(shipped + (parameter - shipped) * scale)
            drift = self.relative_drift()
        return drift

    @torch.no_grad()
    def try_update(
        self,
        guard: Callable[[], GuardDecision] | None = None,
    ) -> UpdateOutcome:
        """One step on the averaged containers, kept only if ``guard()`` accepts it; then the containers are
        emptied either way (a refused step's gradients are not retried).

        The step is bounded (``max_relative_drift``). A refused step is retried at half the size
        ``backtracks`` times (the guard is a trust region: with BatchNorm on fixed statistics a full step can
        move every embedding toward the template at once); the last refusal restores the previous upper
        part exactly.
        """
        snapshot = {name: p.detach().clone() for name, p in self.parameters.items()}
        lr = self.config.learning_rate
        weight = self.config.negative_weight * (1.0 + self.pressure)
        steps = {}
        for name in self.parameters:
            step = self.positive.mean(name)
            if self.negative.count:
                step = step + weight * self.negative.mean(name)
            steps[name] = lr * step
        self.positive.reset()
        self.negative.reset()
        decision: GuardDecision | None = None
        for attempt in range(self.config.backtracks + 1):
            self._restore(snapshot)
            for name, parameter in self.parameters.items():
                parameter.sub_(steps[name] * 0.5**attempt)
            drift = self._bound_drift()
            decision = guard() if guard is not None else None
            if decision is None or decision.accepted:
                self.batch = []
                self.updates += 1
                self._refused_in_a_row = 0
                reason = decision.reason if decision else "applied"
                return UpdateOutcome(True, f"{reason} (step x{0.5**attempt:g})", drift, decision)
        self._restore(snapshot)
        self.batch = []
        self.rejected += 1
        self._refused_in_a_row += 1
        reason = decision.reason if decision else "refused"
        return UpdateOutcome(False, reason, self.relative_drift(), decision)

    @torch.no_grad()
    def _restore(self, snapshot: dict[str, torch.Tensor]) -> None:
        for name, parameter in self.parameters.items():
            parameter.copy_(snapshot[name])

    def follow_probe(self, report: ProbeReport, shipped: ProbeReport, margin: float) -> float:
        """More (and stronger) negatives when the probe's impostors creep up from the shipped model's,
        and after refused updates; back to the base when they do not."""
        creep = max(0.0, report.max_impostor - shipped.max_impostor) / max(margin, 1e-6)
        self.pressure = min(self.config.max_pressure, creep + self._refused_in_a_row)
        return self.pressure

    @contextmanager
    def shipped_weights(self) -> Iterator[None]:
        """Run the upper part with the shipped weights inside the block (containers untouched)."""
        live = {name: p.detach().clone() for name, p in self.parameters.items()}
        try:
            with torch.no_grad():
                for name, parameter in self.parameters.items():
                    parameter.copy_(self.shipped[name])
            yield
        finally:
            with torch.no_grad():
                for name, parameter in self.parameters.items():
                    parameter.copy_(live[name])

    def reset(self) -> None:
        """Put the shipped upper weights back and forget accumulated gradients and pressure."""
        with torch.no_grad():
            for name, parameter in self.parameters.items():
                parameter.copy_(self.shipped[name])
        self.positive.reset()
        self.negative.reset()
        self.batch = []
        self.pressure = 0.0
        self._refused_in_a_row = 0
