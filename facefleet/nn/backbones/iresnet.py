"""ArcFace-style IResNet (insightface arcface_torch layout) for aligned 112×112 faces."""

from __future__ import annotations

import torch
from torch import nn

from facefleet.nn.backbones.base import Backbone, register_backbone, require_multiple_of_16


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """BN-conv-BN-PReLU-conv-BN with an identity (or strided 1×1) shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes, eps=1e-5),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(Backbone):
    """IResNet: 3×3 stem, four stages (64-128-256-512, stride 2 each), BN-dropout-FC-BN embedding.

    Lower part: stem and stages 1-3 (middle tensor [N, 256, S/8, S/8]); upper part: stage 4 and the
    embedding layer.
    """

    def __init__(
        self, layers: list[int], embedding_dim: int = 512, input_size: int = 112, dropout: float = 0.0
    ) -> None:
        super().__init__()
        require_multiple_of_16("iresnet", input_size)
        self.embedding_dim, self.input_size = embedding_dim, input_size
        widths = [64, 128, 256, 512]
        self.stem = nn.Sequential(_conv3x3(3, 64), nn.BatchNorm2d(64, eps=1e-5), nn.PReLU(64))
        stages: list[nn.Sequential] = []
        inplanes = 64
        for width, depth in zip(widths, layers, strict=True):
            blocks = [IBasicBlock(inplanes, width, stride=2)]
            blocks += [IBasicBlock(width, width) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            inplanes = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        final_side = input_size // 16
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(512 * final_side * final_side, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=1e-5)

    def forward_lower(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(self.stem(x))))

    def forward_upper(self, middle: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.layer4(middle))
        out = self.dropout(torch.flatten(out, 1))
        return self.features(self.fc(out))

    def upper_modules(self) -> list[nn.Module]:
        return [self.layer4, self.bn2, self.fc, self.features]


@register_backbone("iresnet18", default_embedding_dim=512)
def iresnet18(embedding_dim: int = 512, input_size: int = 112, **kw: float) -> IResNet:
    return IResNet([2, 2, 2, 2], embedding_dim=embedding_dim, input_size=input_size, **kw)


@register_backbone("iresnet50", default_embedding_dim=512)
def iresnet50(embedding_dim: int = 512, input_size: int = 112, **kw: float) -> IResNet:
    return IResNet([3, 4, 14, 3], embedding_dim=embedding_dim, input_size=input_size, **kw)
