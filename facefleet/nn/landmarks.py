"""facefleet's five-point landmark model and its loss (seed 001: class + class-dependent localisation loss).

The network maps a face crop (3 x S x S, [-1, 1]) to a G x G grid of sub-regions (stride S / G). Each
sub-region predicts class scores over K landmark classes + background (index K) and, for every class, a
reference-point offset (dx, dy) from the sub-region's centre, in sub-region units.

Training targets (``grid_targets``): the sub-region containing landmark k has class k (when two landmarks
fall in one sub-region, the one nearest its centre), every other sub-region is background.

Loss (``landmark_loss``), summed over sub-regions and averaged over images:
- class loss (claims 4-6): cross-entropy in the selected sub-regions: every sub-region containing a
  ground-truth landmark, plus the ``negatives_per_landmark * K`` background sub-regions with the highest
  cross-entropy (hard background; claim 6);
- class-dependent localisation loss (claims 8-9, 13-14): smooth-L1 between the predicted and true offset of
  class k, only in the sub-region containing landmark k and only on class k's offset channels; background
  sub-regions contribute nothing.
Inference (claim 20, ``decode_points``): for each class, the sub-region with the highest class probability;
the point is its centre plus that class's offset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class LandmarkNet(nn.Module):
    """A small CNN: S x S crop -> (class logits B x (K+1) x G x G, offsets B x K x 2 x G x G)."""

    def __init__(self, num_classes: int = 5, input_size: int = 64, grid: int = 8, width: int = 32) -> None:
        super().__init__()
        if input_size % grid or (input_size // grid) not in (4, 8, 16):
            raise ValueError(f"input_size {input_size} / grid {grid} must be a stride of 4, 8 or 16")
        self.num_classes, self.input_size, self.grid = num_classes, input_size, grid
        stride = input_size // grid
        downs = {4: 2, 8: 3, 16: 4}[stride]
        layers: list[nn.Module] = [_block(3, width, 1)]
        channels = width
        for index in range(downs):
            out = min(width * 2 ** (index + 1), 256)
            layers += [_block(channels, out, 2), _block(out, out, 1)]
            channels = out
        layers += [_block(channels, channels, 1)]  # context: 3x3 receptive field at the grid's resolution
        self.features = nn.Sequential(*layers)
        self.classes = nn.Conv2d(channels, num_classes + 1, 1)
        self.offsets = nn.Conv2d(channels, 2 * num_classes, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)
        logits = self.classes(features)
        offsets = self.offsets(features)
        batch, _, rows, cols = offsets.shape
        return logits, offsets.view(batch, self.num_classes, 2, rows, cols)


@dataclass(frozen=True)
class GridTargets:
    classes: torch.Tensor  # B x G x G long: landmark class or K (background)
    cells: torch.Tensor  # B x K long: flat index (row * G + col) of the sub-region holding landmark k
    offsets: torch.Tensor  # B x K x 2: landmark k's offset from that sub-region's centre (sub-region units)
    valid: torch.Tensor  # B x K bool: landmark k lies inside the crop


def grid_targets(points: torch.Tensor, input_size: int, grid: int) -> GridTargets:
    """Targets for ``points`` (B x K x 2, crop pixels, x then y)."""
    batch, classes, _ = points.shape
    cell = input_size / grid
    scaled = points / cell
    valid = (scaled >= 0).all(-1) & (scaled < grid).all(-1)
    index = scaled.floor().clamp(0, grid - 1).long()
    offsets = scaled - (index.to(points.dtype) + 0.5)
    cells = index[..., 1] * grid + index[..., 0]
    labels = torch.full((batch, grid * grid), classes, dtype=torch.long, device=points.device)
    distance = offsets.norm(dim=-1)
    # Write the farthest first so the landmark nearest a shared sub-region's centre wins it.
    order = torch.argsort(distance, dim=1, descending=True)
    for position in range(classes):
        k = order[:, position]
        rows = torch.arange(batch, device=points.device)
        keep = valid[rows, k]
        labels[rows[keep], cells[rows, k][keep]] = k[keep]
    return GridTargets(labels.view(batch, grid, grid), cells, offsets, valid)


def landmark_loss(
    logits: torch.Tensor,
    offsets: torch.Tensor,
    targets: GridTargets,
    *,
    negatives_per_landmark: int = 3,
    localisation_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Class loss + class-dependent localisation loss (module docstring); each averaged over images."""
    batch, classes_plus_one, rows, cols = logits.shape
    k_classes = classes_plus_one - 1
    flat_logits = logits.permute(0, 2, 3, 1).reshape(batch, rows * cols, classes_plus_one)
    labels = targets.classes.reshape(batch, rows * cols)
    cross_entropy = F.cross_entropy(
        flat_logits.reshape(-1, classes_plus_one), labels.reshape(-1), reduction="none"
    )
    cross_entropy = cross_entropy.view(batch, rows * cols)
    landmark_cells = labels != k_classes
    background = cross_entropy.detach().masked_fill(landmark_cells, -1.0)
    count = min(negatives_per_landmark * k_classes, rows * cols)
    hard = torch.zeros_like(landmark_cells)
    if count:
        top = background.topk(count, dim=1).indices
        hard.scatter_(1, top, True)
        hard &= ~landmark_cells
    selected = landmark_cells | hard
    class_loss = (cross_entropy * selected).sum() / batch

    flat_offsets = offsets.reshape(batch, k_classes, 2, rows * cols)
    gather_index = targets.cells[:, :, None, None].expand(batch, k_classes, 2, 1)
    predicted = flat_offsets.gather(3, gather_index).squeeze(3)  # class k's offset in landmark k's cell
    error = F.smooth_l1_loss(predicted, targets.offsets.to(predicted.dtype), reduction="none").sum(-1)
    localisation_loss = (error * targets.valid).sum() / batch
    return {
        "loss": class_loss + localisation_weight * localisation_loss,
        "class_loss": class_loss,
        "localisation_loss": localisation_loss,
    }


def decode_points(logits: torch.Tensor, offsets: torch.Tensor, input_size: int) -> torch.Tensor:
    """B x K x 2 points in crop pixels: each class from its most probable sub-region plus its offset."""
    batch, classes_plus_one, rows, cols = logits.shape
    k_classes = classes_plus_one - 1
    probabilities = torch.softmax(logits, dim=1)[:, :k_classes].reshape(batch, k_classes, rows * cols)
    best = probabilities.argmax(dim=2)  # B x K
    flat_offsets = offsets.reshape(batch, k_classes, 2, rows * cols)
    chosen = flat_offsets.gather(3, best[:, :, None, None].expand(batch, k_classes, 2, 1)).squeeze(3)
    col = (best % cols).to(offsets.dtype)
    row = torch.div(best, cols, rounding_mode="floor").to(offsets.dtype)
    cell = input_size / cols
    x = (col + 0.5 + chosen[..., 0]) * cell
    y = (row + 0.5 + chosen[..., 1]) * cell
    return torch.stack([x, y], dim=-1)


class LandmarkInference(nn.Module):
    """The exported graph: crops -> points (B x K x 2, crop pixels)."""

    def __init__(self, net: LandmarkNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, offsets = self.net(x)
        return decode_points(logits, offsets, self.net.input_size)
