"""The terminal's inference rewrite computes the same function as the verified graph, without PRelu or BN."""

from __future__ import annotations

import collections
import io
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from facefleet.terminal.onnx_fast import open_terminal_session, rewrite_for_inference


class PreluNet(nn.Module):
    """Conv-PReLU (per-channel slopes, some > 1 and < 0), a shared-slope PReLU pair, Linear-BN1d."""

    def __init__(self, slopes: torch.Tensor) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.prelu = nn.PReLU(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.same_a, self.same_b = nn.PReLU(8), nn.PReLU(8)  # equal init: the exporter aliases them
        self.linear = nn.Linear(8 * 8 * 8, 16)
        self.bn = nn.BatchNorm1d(16)
        with torch.no_grad():
            self.prelu.weight.copy_(slopes)
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.same_b(self.conv2(self.same_a(self.prelu(self.conv(x)))))
        return self.bn(self.linear(torch.flatten(out, 1)))


@pytest.mark.parametrize(
    "slopes", [[0.0, 0.1, 0.25, 0.5, 0.9, 1.0, -0.2, 0.3], [0.1, 1.5, 2.0, -0.5, 0.3, 1.0, 0.0, 3.0]]
)
def test_rewrite_matches_original_graph(slopes: list[float], tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = PreluNet(torch.tensor(slopes)).eval()
    buffer = io.BytesIO()
    torch.onnx.export(
        net,
        (torch.zeros(1, 3, 8, 8),),
        buffer,
        dynamo=False,
        opset_version=17,
        input_names=["images"],
        output_names=["embeddings"],
        dynamic_axes={"images": {0: "n"}, "embeddings": {0: "n"}},
    )
    original = buffer.getvalue()
    rewritten = onnx.load_from_string(rewrite_for_inference(original))
    onnx.checker.check_model(rewritten)
    assert not [n for n in rewritten.graph.node if n.op_type in ("PRelu", "BatchNormalization")]

    images = (torch.rand(4, 3, 8, 8) * 4 - 2).numpy()
    reference = ort.InferenceSession(original, providers=["CPUExecutionProvider"]).run(
        None, {"images": images}
    )[0]
    optimised_path = tmp_path / "optimised.onnx"
    session = open_terminal_session(original, optimized_model_path=optimised_path)
    actual = session.run(None, {"images": images})[0]
    with torch.inference_mode():
        expected = net(torch.from_numpy(images)).numpy()
    assert np.abs(reference - expected).max() < 1e-5
    assert np.abs(actual - expected).max() < 1e-5
    ops = collections.Counter(n.op_type for n in onnx.load(str(optimised_path)).graph.node)
    assert ops["PRelu"] == 0 and ops["BatchNormalization"] == 0
