"""The fixed probe input whose embeddings a model card records, so a terminal can self-test an install."""

from __future__ import annotations

import torch


def make_probe_input(seed: int = 1234, count: int = 2, input_size: int = 112) -> torch.Tensor:
    """Deterministic images in [-1, 1] of shape [count, 3, input_size, input_size], alike on every machine."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((count, 3, input_size, input_size), generator=generator, dtype=torch.float32) * 2 - 1
