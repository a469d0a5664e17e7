"""Benchmark: embedding latency of terminal models on one CPU thread, onnxruntime (the terminal's engine,
through `facefleet.terminal.runtime.TerminalModel`) vs PyTorch eager, batch 1. Target: ratio <= 0.5.
Run: .venv/bin/python bench/terminal.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from safetensors.torch import save_file

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
from facefleet.terminal.runtime import TerminalModel

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


def terminal_model(name: str, dim: int, size: int, folder: Path) -> tuple[torch.nn.Module, TerminalModel]:
    torch.manual_seed(0)
    net = get_backbone(name, embedding_dim=dim, input_size=size).eval()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "model.safetensors"))
    torch.onnx.export(
        net,
        (torch.zeros(1, 3, size, size),),
        str(folder / "model.onnx"),
        dynamo=False,
        input_names=["images"],
        output_names=["embeddings"],
        dynamic_axes={"images": {0: "n"}, "embeddings": {0: "n"}},
    )
    with torch.no_grad():
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
    return net, TerminalModel(folder, card, threads=1)


def main() -> None:
    torch.set_num_threads(1)
    table = Table(
        "model",
        "dim",
        "input",
        "torch eager ms",
        "onnxruntime ms",
        "ratio (ort/torch)",
        "≤ 0.5?",
        title="Terminal embedding latency, batch 1, one CPU thread (median of 60, alternating)",
    )
    for name, dim, size in MODELS:
        with tempfile.TemporaryDirectory() as tmp:
            net, model = terminal_model(name, dim, size, Path(tmp))
            model.self_test()
            image = np.random.default_rng(0).uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
            tensor = torch.from_numpy(image)
            with torch.no_grad():
                eager, ort_ms = paired_median_ms(lambda: net(tensor), lambda: model.embed(image))  # noqa: B023
        ratio = ort_ms / eager
        table.add_row(
            name,
            str(dim),
            f"{size}²",
            f"{eager:.2f}",
            f"{ort_ms:.2f}",
            f"{ratio:.2f}",
            "yes" if ratio <= 0.5 else "no",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
