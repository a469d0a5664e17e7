"""Synthetic 'faces' for terminal tests: a smooth per-user pattern, per-capture noise, and a slow drift."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image


@lru_cache(maxsize=4096)
def _smooth_pattern(seed: int, size: int, cells: int = 6) -> np.ndarray:
    coarse = np.random.default_rng(seed).uniform(0, 255, size=(cells, cells, 3)).astype(np.uint8)
    return np.asarray(
        Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32
    )


def face(user: int, capture: int, *, drift: float = 0.0, size: int = 32, noise: float = 12.0) -> Image.Image:
    """User ``user``'s ``capture``-th image; ``drift`` in [0, 1] blends in that user's changed appearance."""
    base = _smooth_pattern(1000 + user, size)
    changed = _smooth_pattern(5000 + user, size)  # where this user's appearance drifts to (beard, ageing...)
    lighting = _smooth_pattern(9999, size)  # shared by everyone: the site's lighting changed too
    image = (1 - drift) * base + drift * (0.5 * changed + 0.5 * lighting)
    image = image + np.random.default_rng(user * 100_003 + capture).normal(0, noise, size=image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def face_batch(users: list[int], *, capture_offset: int = 0, size: int = 32, drift: float = 0.0):  # -> Tensor
    """A float batch [N, 3, size, size] in [-1, 1] (training the test model without going through PNG)."""
    import torch

    arrays = [
        np.asarray(face(u, capture_offset + i, drift=drift, size=size), dtype=np.float32)
        for i, u in enumerate(users)
    ]
    stacked = (np.stack(arrays) / 255.0 - 0.5) / 0.5
    return torch.from_numpy(stacked.transpose(0, 3, 1, 2).copy())
