"""Batch augmentation for training on few images per person: small random affine jitter of the aligned
crop (shift, scale, rotation) and photometric jitter (brightness, contrast, saturation, random greyscale).

Pure tensors: ``augment_batch(images, settings, generator)`` takes a [N, 3, H, W] batch in [-1, 1] (the data
pipeline's range) and returns a new batch; every random draw comes from the generator, so a run's draws are
fixed by its seed, rank and step (``step_generator``) and a run resumed from a checkpoint draws the same.
The crop is already aligned (five landmarks, design §5.9), so the jitter is small: it imitates what an
aligner's landmark error and a camera's exposure do to one person's photos, not a new pose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# ITU-R BT.601 luma weights (the greyscale of PIL's "L" mode).
LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentSettings:
    """Maximum jitter per image; each drawn uniformly in [-max, max] (greyscale: a probability)."""

    shift: float = 0.0  # fraction of the side, per axis
    scale: float = 0.0  # relative zoom
    rotation_degrees: float = 0.0
    brightness: float = 0.0  # added, in units of the [-1, 1] range's half-width
    contrast: float = 0.0  # relative
    saturation: float = 0.0  # relative
    greyscale_p: float = 0.0

    @property
    def geometric(self) -> bool:
        return self.shift > 0 or self.scale > 0 or self.rotation_degrees > 0

    @property
    def photometric(self) -> bool:
        return self.brightness > 0 or self.contrast > 0 or self.saturation > 0 or self.greyscale_p > 0

    @property
    def enabled(self) -> bool:
        return self.geometric or self.photometric


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """A CPU generator whose draws depend only on (seed, rank, step)."""
    mixed = (seed * 1_000_003 + rank * 10_007 + step) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


def _uniform(n: int, bound: float, generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=generator) * 2.0 - 1.0) * bound


def affine_matrices(n: int, settings: AugmentSettings, generator: torch.Generator) -> torch.Tensor:
    """[n, 2, 3] sampling matrices for ``F.affine_grid`` (output pixel -> input pixel, normalised coords)."""
    angle = _uniform(n, math.radians(settings.rotation_degrees), generator)
    zoom = 1.0 + _uniform(n, settings.scale, generator)
    shift = _uniform(2 * n, 2.0 * settings.shift, generator).view(n, 2)  # normalised coords span 2
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    return torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], dim=1), torch.stack([sin, cos, shift[:, 1]], dim=1)], dim=1
    )


def greyscale(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] -> [N, 1, H, W] luma."""
    weights = images.new_tensor(LUMA).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def photometric_jitter(
    images: torch.Tensor, settings: AugmentSettings, generator: torch.Generator
) -> torch.Tensor:
    n = images.shape[0]

    def per_image(values: torch.Tensor) -> torch.Tensor:
        return values.to(images.device, images.dtype).view(n, 1, 1, 1)

    out = images
    if settings.saturation > 0:
        grey = greyscale(out)
        out = grey + (out - grey) * per_image(1.0 + _uniform(n, settings.saturation, generator))
    if settings.contrast > 0:
        mean = greyscale(out).mean(dim=(2, 3), keepdim=True)
        out = mean + (out - mean) * per_image(1.0 + _uniform(n, settings.contrast, generator))
    if settings.brightness > 0:
        out = out + per_image(_uniform(n, settings.brightness, generator))
    if settings.greyscale_p > 0:
        chosen = per_image((torch.rand(n, generator=generator) < settings.greyscale_p).float())
        out = out * (1.0 - chosen) + greyscale(out).expand_as(out) * chosen
    return out.clamp(-1.0, 1.0)


def augment_batch(
    images: torch.Tensor, settings: AugmentSettings, generator: torch.Generator
) -> torch.Tensor:
    """A jittered copy of ``images`` ([N, 3, H, W] in [-1, 1]); the input itself is left as it is."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [N, 3, H, W], got {tuple(images.shape)}")
    if not settings.enabled or images.shape[0] == 0:
        return images
    out = images
    if settings.geometric:
        theta = affine_matrices(images.shape[0], settings, generator).to(images.device, images.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        out = F.grid_sample(out, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if settings.photometric:
        out = photometric_jitter(out, settings, generator)
    return out
