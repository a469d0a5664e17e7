"""A four-conv embedding net that trains in seconds on a CPU (tests, the demo, smoke runs)."""

from __future__ import annotations

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
    """Four 3×3 convs (three with stride 2), global average pooling, linear, BatchNorm.

    Works at any input size ≥ 16 (pooling is global). Lower part: the first two convs (middle tensor
    [N, 2w, S/4, S/4]); upper part: the last two convs and the embedding layer.
    """

    def __init__(self, embedding_dim: int = 64, input_size: int = 112, width: int = 16) -> None:
        super().__init__()
        if input_size < 16:
            raise ValueError(f"tiny needs input_size >= 16, got {input_size}")
        self.embedding_dim, self.input_size = embedding_dim, input_size
        self.lower = nn.Sequential(_conv(3, width, 2), _conv(width, 2 * width, 2))
        self.upper = nn.Sequential(_conv(2 * width, 4 * width, 2), _conv(4 * width, 4 * width, 1))
        self.linear = nn.Linear(4 * width, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim)

    def forward_lower(self, x: torch.Tensor) -> torch.Tensor:
        return self.lower(x)

    def forward_upper(self, middle: torch.Tensor) -> torch.Tensor:
        pooled = self.upper(middle).mean(dim=(2, 3))
        return self.features(self.linear(pooled))

    def upper_modules(self) -> list[nn.Module]:
        return [self.upper, self.linear, self.features]


@register_backbone("tiny", default_embedding_dim=64)
def tiny(embedding_dim: int = 64, input_size: int = 112, width: int = 16) -> TinyNet:
    return TinyNet(embedding_dim=embedding_dim, input_size=input_size, width=width)
