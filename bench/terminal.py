"""Benchmark: embedding latency of terminal models on one CPU thread, onnxruntime vs PyTorch eager, batch 1.

The onnxruntime side is exactly what a terminal runs: the platform's export (`write_onnx`), installed as a
`TerminalModel` with its default options (one thread, session built by `open_terminal_session`), self-test
passed, timed through `TerminalModel.embed`. The baseline is the same module in eval mode under
`torch.inference_mode()` with `torch.set_num_threads(1)`. Target: ratio <= 0.5.
`--int8` adds a statically quantised row: a different model, reported with its cosine agreement only.
Run: .venv/bin/python bench/terminal.py [--int8]
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from rich.console import Console
from rich.table import Table

from facefleet.nn.backbones import get_backbone
from facefleet.nn.probe import make_probe_input
from facefleet.terminal.bundle import (
    CardArchitecture,
    CardArtifact,
    CardInput,
    CardProbe,
    TerminalCard,
    sha256_file,
)
from facefleet.terminal.onnx_fast import open_terminal_session
from facefleet.terminal.runtime import TerminalModel
from facefleet.workers.export import check_onnx_parity, write_onnx, write_safetensors

MODELS = [("mobilefacenet", 128, 112), ("tiny", 64, 112), ("iresnet18", 512, 112)]
WARMUP, REPEATS = 5, 60


def paired_median_ms(first: Callable[[], object], second: Callable[[], object]) -> tuple[float, float]:
    """Medians of both, measured alternately so that load from other processes hits both alike."""
    for _ in range(WARMUP):
        first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(REPEATS):
        for fn, bucket in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            fn()
            bucket.append((time.perf_counter() - start) * 1000)
    return statistics.median(times[0]), statistics.median(times[1])


def trained_like(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give a fresh net the parameter statistics of a trained one (no weights are downloaded).

    A fresh init is not what terminals run: every PReLU slope is 0.25 (the exporter then shares one
    tensor behind Identity nodes) and BN statistics are (0, 1), which shrinks activations towards
    denormals. Per-channel slopes and non-trivial BN statistics are what trained nets have.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.PReLU):
                module.weight.uniform_(-0.1, 0.6, generator=generator)
            elif isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.normal_(0.0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.1, generator=generator)
    return net.eval()


def install(name: str, dim: int, size: int, folder: Path) -> tuple[torch.nn.Module, TerminalModel]:
    """Export like the platform does and load like the terminal does (default TerminalModel options)."""
    torch.manual_seed(0)
    net = trained_like(get_backbone(name, embedding_dim=dim, input_size=size), seed=1)
    write_safetensors(net, folder / "model.safetensors")
    write_onnx(net, size, folder / "model.onnx")
    check_onnx_parity(net, folder / "model.onnx", size)
    with torch.inference_mode():
        probe = net(make_probe_input(1234, 2, size)).tolist()
    card = TerminalCard(
        name=name,
        version=1,
        architecture=CardArchitecture(backbone=name),
        input=CardInput(size=size),
        embedding_dim=dim,
        threshold=0.5,
        probe=CardProbe(seed=1234, count=2, embeddings=probe),
        artifacts={
            f: CardArtifact(sha256=sha256_file(folder / f), size=(folder / f).stat().st_size)
            for f in ("model.onnx", "model.safetensors")
        },
    )
    return net, TerminalModel(folder, card)


def optimised_ops(folder: Path) -> str:
    """Op types left in the graph onnxruntime runs (same session helper, optimised graph saved)."""
    path = folder / "optimised.onnx"
    open_terminal_session((folder / "model.onnx").read_bytes(), optimized_model_path=path)
    counts = collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    watched = {"BN": "BatchNormalization", "PRelu": "PRelu", "in": "ReorderInput", "out": "ReorderOutput"}
    return " ".join(f"{short}={counts.get(op, 0)}" for short, op in watched.items())


def int8_row(
    net: torch.nn.Module, model: TerminalModel, folder: Path, image: np.ndarray
) -> tuple[float, float, float]:
    """(torch ms, int8 ms, worst cosine vs the float model on 16 held-out inputs) of a U8S8 QDQ model."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class ProbeReader(CalibrationDataReader):
        def __init__(self) -> None:
            images = make_probe_input(7, 8, model.input_size).numpy()
            self.batches = iter([{"images": images[i : i + 1]} for i in range(len(images))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    logging.getLogger().setLevel(logging.ERROR)  # the quantiser's advice lines
    quant_pre_process(str(folder / "model.onnx"), str(folder / "model.pre.onnx"))
    quantize_static(
        folder / "model.pre.onnx",
        folder / "model.int8.onnx",
        ProbeReader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,  # u8 activations × s8 weights: the VNNI kernels on x86
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    session = open_terminal_session((folder / "model.int8.onnx").read_bytes())
    held_out = make_probe_input(99, 16, model.input_size).numpy()
    ours = np.concatenate([session.run(None, {"images": held_out[i : i + 1]})[0] for i in range(16)])
    with torch.inference_mode():
        ref = net(torch.from_numpy(held_out)).numpy()
        eager, ms = paired_median_ms(
            lambda: net(torch.from_numpy(image)), lambda: session.run(None, {"images": image})
        )
    cosine = np.sum(ours * ref, 1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    return eager, ms, float(cosine.min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--int8", action="store_true", help="add an int8 row (a different model)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # the TorchScript exporter's notice
    console = Console(width=150)
    console.print(f"load average before: {os.getloadavg()[0]:.2f} (1 min), cores: {os.cpu_count()}")
    table = Table(
        "model",
        "input",
        "torch eager ms",
        "onnxruntime ms",
        "ratio",
        "≤ 0.5?",
        "probe err",
        "ORT graph (BN, PRelu, NCHWc reorders)",
        title="Terminal embedding latency, batch 1, one CPU thread (median of 60, alternating)",
    )
    for name, dim, size in MODELS:
        with tempfile.TemporaryDirectory() as tmp:
            net, model = install(name, dim, size, Path(tmp))
            probe_error = model.self_test()
            image = np.random.default_rng(0).uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
            tensor = torch.from_numpy(image)
            with torch.inference_mode():
                eager, ort_ms = paired_median_ms(lambda: net(tensor), lambda: model.embed(image))  # noqa: B023
            ratio = ort_ms / eager
            table.add_row(
                name,
                f"{size}²",
                f"{eager:.2f}",
                f"{ort_ms:.2f}",
                f"{ratio:.2f}",
                "yes" if ratio <= 0.5 else "no",
                f"{probe_error:.1e}",
                optimised_ops(Path(tmp)),
            )
            if args.int8 and name != "tiny":
                eager8, ms, cosine = int8_row(net, model, Path(tmp), image)
                table.add_row(
                    f"{name} INT8 (different model)",
                    f"{size}²",
                    f"{eager8:.2f}",
                    f"{ms:.2f}",
                    f"{ms / eager8:.2f}",
                    "n/a",
                    f"min cos {cosine:.5f}",
                    "static U8S8 QDQ, calibrated on 8 probe inputs",
                )
    console.print(table)
    console.print(f"load average after: {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
