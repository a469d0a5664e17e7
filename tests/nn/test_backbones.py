"""Every registered backbone: forward shape, the lower/upper split, and ONNX export."""

from __future__ import annotations

import io

import pytest
import torch

from facefleet.nn.backbones import default_embedding_dim, get_backbone, list_backbones
from facefleet.nn.backbones.tiny import TinyNet

# the big nets are checked at a small input to keep CPU time low; tiny also at its usual sizes
SIZES = {"iresnet18": 32, "iresnet50": 32, "mobilefacenet": 32, "tiny": 32, "tiny_gdc": 48}


def test_registry_names() -> None:
    assert {"iresnet18", "iresnet50", "mobilefacenet", "tiny", "tiny_gdc"} <= set(list_backbones())
    assert default_embedding_dim("iresnet50") == 512 and default_embedding_dim("mobilefacenet") == 128
    with pytest.raises(ValueError, match="unknown backbone"):
        get_backbone("resnet9000")
    with pytest.raises(ValueError, match="multiple of 16"):
        get_backbone("iresnet18", input_size=100)


@pytest.mark.parametrize("name", list_backbones())
def test_forward_and_split(name: str) -> None:
    torch.manual_seed(0)
    size = SIZES.get(name, 32)
    net = get_backbone(name, input_size=size).eval()
    x = torch.randn(3, 3, size, size)
    embedding = net(x)
    assert embedding.shape == (3, default_embedding_dim(name))
    assert torch.isfinite(embedding).all()
    middle = net.forward_lower(x)
    assert middle.dim() == 4
    assert torch.equal(net.forward_upper(middle), embedding)
    # upper_parameters are exactly the parameters that forward_upper uses
    upper = list(net.upper_parameters())
    upper_ids = {id(p) for p in upper}
    net.zero_grad()
    net.forward_upper(middle.detach()).sum().backward()
    reached = {id(p) for p in net.parameters() if p.grad is not None}
    assert reached == upper_ids
    assert 0 < len(upper) < len(list(net.parameters()))


def test_tiny_accepts_112_and_custom_dim() -> None:
    net = get_backbone("tiny", embedding_dim=32, input_size=112).eval()
    assert net(torch.randn(2, 3, 112, 112)).shape == (2, 32)
    assert net.embedding_dim == 32 and net.input_size == 112


@pytest.mark.parametrize("size", [48, 50, 112])
def test_tiny_gdc_weighs_positions(size: int) -> None:
    """The global depthwise conv covers the whole last map (ceil(S/8) square) and, unlike averaging, sees
    where a feature is: moving the last map's content to another position changes the embedding."""
    torch.manual_seed(0)
    net = get_backbone("tiny_gdc", input_size=size).eval()
    assert net.pool is not None
    assert net.pool[0].kernel_size == (-(-size // 8),) * 2
    assert net(torch.randn(2, 3, size, size)).shape == (2, 64)
    last = net.upper(net.forward_lower(torch.randn(1, 3, size, size)))
    assert last.shape[-2:] == net.pool[0].kernel_size
    pooled = net.pool(last).flatten(1)
    rolled = net.pool(last.roll(1, dims=-1)).flatten(1)
    assert not torch.allclose(pooled, rolled)
    with pytest.raises(ValueError, match="pool must be"):
        TinyNet(input_size=size, pool="max")  # type: ignore[arg-type]


def test_mobilefacenet_at_112_trains_one_step() -> None:
    net = get_backbone("mobilefacenet")
    out = net(torch.randn(2, 3, 112, 112))
    out.pow(2).mean().backward()
    assert out.shape == (2, 128)
    assert all(p.grad is not None for p in net.parameters())  # nothing unused (DDP-friendly)


@pytest.mark.parametrize("name", ["tiny", "tiny_gdc", "mobilefacenet", "iresnet18"])
def test_onnx_export_matches_torch(name: str) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    size = SIZES[name]
    net = get_backbone(name, input_size=size).eval()
    x = torch.randn(2, 3, size, size)
    buffer = io.BytesIO()
    torch.onnx.export(
        net,
        (x,),
        buffer,
        dynamo=False,
        input_names=["input"],
        output_names=["embedding"],
        dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}},
    )
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    batch = torch.randn(5, 3, size, size)
    (got,) = session.run(None, {"input": batch.numpy()})
    with torch.no_grad():
        want = net(batch).numpy()
    assert abs(got - want).max() <= 1e-4 * max(1.0, float(abs(want).max()))
