"""MTCNN's three networks (Zhang et al. 2016), laid out so the facenet-pytorch state dicts load unchanged.

Pure tensors: the detection pipeline around them (pyramid, NMS, box regression) is in facefleet.faces.
Each forward returns raw outputs in the order ONNX export and the pipeline expect:
P-Net (box regression 4xHxW, face probability 2xHxW), R-Net (regression 4, probability 2),
O-Net (regression 4, landmarks 10 = five x then five y, relative to the box, probability 2).
"""

from __future__ import annotations

import torch
from torch import nn

# One conv stage: (output channels, conv kernel, max-pool kernel or None); pools have stride 2 and ceil_mode.
_Stage = tuple[int, int, int | None]


def _add_conv_stages(net: nn.Module, stages: list[_Stage]) -> None:
    """Register conv{i}, prelu{i} and pool{i} (where the stage pools), i from 1: the names the
    facenet-pytorch state dicts use, so the wheel's weights load unchanged."""
    in_channels = 3
    for i, (out, kernel, pool) in enumerate(stages, start=1):
        net.add_module(f"conv{i}", nn.Conv2d(in_channels, out, kernel_size=kernel))
        net.add_module(f"prelu{i}", nn.PReLU(out))
        if pool is not None:
            net.add_module(f"pool{i}", nn.MaxPool2d(pool, 2, ceil_mode=True))
        in_channels = out


def _run_conv_stages(net: nn.Module, x: torch.Tensor, count: int) -> torch.Tensor:
    """pool{i}(prelu{i}(conv{i}(x))) for i = 1..count (no pool where the stage has none)."""
    modules = dict(net.named_children())
    for i in range(1, count + 1):
        x = modules[f"prelu{i}"](modules[f"conv{i}"](x))
        if f"pool{i}" in modules:
            x = modules[f"pool{i}"](x)
    return x


class PNet(nn.Module):
    """Proposal network: fully convolutional, 12x12 receptive field, stride 2."""

    def __init__(self) -> None:
        super().__init__()
        _add_conv_stages(self, [(10, 3, 2), (16, 3, None), (32, 3, None)])
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = _run_conv_stages(self, x, 3)
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)


class RNet(nn.Module):
    """Refinement network on 24x24 crops."""

    def __init__(self) -> None:
        super().__init__()
        _add_conv_stages(self, [(28, 3, 3), (48, 3, 3), (64, 2, None)])
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = _run_conv_stages(self, x, 3)
        # The original (Caffe/TF) weights flatten in (W, H, C) order.
        x = x.permute(0, 3, 2, 1).contiguous().flatten(1)
        x = self.prelu4(self.dense4(x))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """Output network on 48x48 crops: final box, face probability and five landmarks."""

    def __init__(self) -> None:
        super().__init__()
        _add_conv_stages(self, [(32, 3, 3), (64, 3, 3), (64, 3, 2), (128, 2, None)])
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = _run_conv_stages(self, x, 4)
        x = x.permute(0, 3, 2, 1).contiguous().flatten(1)
        x = self.prelu5(self.dense5(x))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)
