"""MobileFaceNet (Chen et al. 2018): a lightweight 128-d face embedding net for terminals."""

from __future__ import annotations

import torch
from torch import nn

from facefleet.nn.backbones.base import Backbone, register_backbone, require_multiple_of_16


class ConvBlock(nn.Sequential):
    """Conv-BN, followed by PReLU unless `linear`."""

    def __init__(
        self,
        in_c: int,
        out_c: int,
        kernel: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        linear: bool = False,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_c),
        ]
        if not linear:
            layers.append(nn.PReLU(out_c))
        super().__init__(*layers)


class InvertedBottleneck(nn.Module):
    """1×1 expand, 3×3 depthwise, linear 1×1 project; residual when shapes allow."""

    def __init__(self, in_c: int, out_c: int, expanded: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvBlock(in_c, expanded),
            ConvBlock(expanded, expanded, kernel=3, stride=stride, padding=1, groups=expanded),
            ConvBlock(expanded, out_c, linear=True),
        )
        self.residual = stride == 1 and in_c == out_c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


def _stage(in_c: int, out_c: int, expanded: int, stride: int, repeats: int) -> nn.Sequential:
    blocks = [InvertedBottleneck(in_c, out_c, expanded, stride)]
    blocks += [InvertedBottleneck(out_c, out_c, expanded, 1) for _ in range(repeats)]
    return nn.Sequential(*blocks)


class MobileFaceNet(Backbone):
    """MobileFaceNet: stride-2 stem, bottleneck stages to S/16, 1×1 to 512, global depthwise conv, linear.

    Lower part: stem and stages to S/8 (middle tensor [N, 128, S/8, S/8]); upper part: the last
    downsampling stage, the 1×1 expansion, the global depthwise conv and the embedding layer.
    """

    def __init__(self, embedding_dim: int = 128, input_size: int = 112) -> None:
        super().__init__()
        require_multiple_of_16("mobilefacenet", input_size)
        self.embedding_dim, self.input_size = embedding_dim, input_size
        self.stem = nn.Sequential(
            ConvBlock(3, 64, kernel=3, stride=2, padding=1),
            ConvBlock(64, 64, kernel=3, padding=1, groups=64),
        )
        self.stage3 = _stage(64, 64, 128, stride=2, repeats=4)
        self.stage4 = _stage(64, 128, 256, stride=2, repeats=6)
        self.stage5 = _stage(128, 128, 512, stride=2, repeats=2)
        side = input_size // 16
        self.expand = ConvBlock(128, 512)
        self.global_dw = ConvBlock(512, 512, kernel=side, groups=512, linear=True)
        self.linear = nn.Linear(512, embedding_dim, bias=False)
        self.features = nn.BatchNorm1d(embedding_dim)

    def forward_lower(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage4(self.stage3(self.stem(x)))

    def forward_upper(self, middle: torch.Tensor) -> torch.Tensor:
        out = self.global_dw(self.expand(self.stage5(middle)))
        return self.features(self.linear(torch.flatten(out, 1)))

    def upper_modules(self) -> list[nn.Module]:
        return [self.stage5, self.expand, self.global_dw, self.linear, self.features]


@register_backbone("mobilefacenet", default_embedding_dim=128)
def mobilefacenet(embedding_dim: int = 128, input_size: int = 112) -> MobileFaceNet:
    return MobileFaceNet(embedding_dim=embedding_dim, input_size=input_size)
