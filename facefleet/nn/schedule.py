"""Learning-rate schedule: linear warmup, then cosine decay to a floor."""

from __future__ import annotations

import math


def warmup_cosine_factor(
    step: int, *, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0
) -> float:
    """Multiplier of the base LR at `step`: linear from ~0 to 1 over warmup, cosine from 1 to min_ratio."""
    if total_steps <= 0:
        raise ValueError("total_steps must be positive")
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
