"""Four-conv embedding nets that train in seconds on a CPU. `tiny` (tests, the demo, smoke runs) pools its
last feature map by averaging; `tiny_gdc` replaces the average by MobileFaceNet's global depthwise conv (a
learnt weight per channel and position, so the embedding knows where on the face a feature is) and learns
real faces much better for about 10 % more time per step (bench/backbones.py; README, "Real faces")."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from facefleet.nn.backbones.base import Backbone, register_backbone


def _conv(in_c: int, out_c: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_c, out_c, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_c),
        nn.PReLU(out_c),
    )


class TinyNet(Backbone):
    """Four 3×3 convs (three with stride 2), global pooling, linear, BatchNorm.

    pool "mean": global average pooling, any input size ≥ 16. pool "gdc": a depthwise conv whose kernel
    covers the whole last map (ceil(S/8) square) followed by BatchNorm, so the net takes only the input
    size it was built for. Lower part: the first two convs (middle tensor [N, 2w, ceil(S/4), ceil(S/4)]);
    upper part: the last two convs, the pooling and the embedding layer.
    """

    def __init__(
        self,
        embedding_dim: int = 64,
        input_size: int = 112,
        width: int = 16,
        pool: Literal["mean", "gdc"] = "mean",
    ) -> None:
        super().__init__()
        if input_size < 16:
            raise ValueError(f"tiny needs input_size >= 16, got {input_size}")
        self.embedding_dim, self.input_size = embedding_dim, input_size
        self.lower = nn.Sequential(_conv(3, width, 2), _conv(width, 2 * width, 2))
        self.upper = nn.Sequential(_conv(2 * width, 4 * width, 2), _conv(4 * width, 4 * width, 1))
        if pool not in ("mean", "gdc"):
            raise ValueError(f"pool must be 'mean' or 'gdc', got {pool!r}")
        self.pool: nn.Module | None = None
        if pool == "gdc":
            side = -(-input_size // 8)
            self.pool = nn.Sequential(
                nn.Conv2d(4 * width, 4 * width, side, groups=4 * width, bias=False), nn.BatchNorm2d(4 * width)
            )
        self.linear = nn.Linear(4 * width, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim)

    def forward_lower(self, x: torch.Tensor) -> torch.Tensor:
        return self.lower(x)

    def forward_upper(self, middle: torch.Tensor) -> torch.Tensor:
        upper = self.upper(middle)
        pooled = upper.mean(dim=(2, 3)) if self.pool is None else self.pool(upper).flatten(1)
        return self.features(self.linear(pooled))

    def upper_modules(self) -> list[nn.Module]:
        return [self.upper, *([self.pool] if self.pool is not None else []), self.linear, self.features]


@register_backbone("tiny", default_embedding_dim=64)
def tiny(embedding_dim: int = 64, input_size: int = 112, width: int = 16) -> TinyNet:
    return TinyNet(embedding_dim=embedding_dim, input_size=input_size, width=width)


@register_backbone("tiny_gdc", default_embedding_dim=64)
def tiny_gdc(embedding_dim: int = 64, input_size: int = 112, width: int = 16) -> TinyNet:
    return TinyNet(embedding_dim=embedding_dim, input_size=input_size, width=width, pool="gdc")
