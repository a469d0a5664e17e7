"""MTCNN's networks as ONNX files for terminals (and ONNX Runtime runners over them, or over any copies)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from facefleet.faces.detect import MTCNNRunners, Runner

MTCNN_FILES = {"pnet": "mtcnn_pnet.onnx", "rnet": "mtcnn_rnet.onnx", "onet": "mtcnn_onet.onnx"}
PARITY_TOLERANCE = 1e-4


def export_mtcnn(folder: Path) -> dict[str, str]:
    """Write the three networks (dynamic batch; P-Net also dynamic height and width); role -> file name."""
    from facefleet.faces.weights import load_mtcnn

    pnet, rnet, onet = load_mtcnn()
    specs = [
        ("pnet", pnet, (1, 3, 40, 50), ["reg", "prob"], {0: "batch", 2: "height", 3: "width"}),
        ("rnet", rnet, (2, 3, 24, 24), ["reg", "prob"], {0: "batch"}),
        ("onet", onet, (2, 3, 48, 48), ["reg", "points", "prob"], {0: "batch"}),
    ]
    for role, net, shape, outputs, axes in specs:
        path = folder / MTCNN_FILES[role]
        example = torch.rand(*shape) * 2 - 1
        torch.onnx.export(
            net,
            (example,),
            str(path),
            input_names=["images"],
            output_names=outputs,
            dynamic_axes={"images": axes, **{name: {0: "batch"} for name in outputs}},
            opset_version=17,
            training=torch.onnx.TrainingMode.EVAL,
            dynamo=False,
        )
        check_parity(net, path, example)
    return dict(MTCNN_FILES)


def check_parity(net: torch.nn.Module, path: Path, example: torch.Tensor) -> float:
    session = _session(path.read_bytes())
    with torch.no_grad():
        expected = [out.numpy() for out in net(example)]
    actual = session.run(None, {"images": example.numpy()})
    worst = max(float(np.abs(a - e).max()) for a, e in zip(actual, expected, strict=True))
    if worst > PARITY_TOLERANCE:
        raise RuntimeError(f"{path.name}: ONNX differs from torch by {worst:.2e}")
    return worst


def _session(data: bytes, threads: int = 1):  # type: ignore[no-untyped-def]
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])


def onnx_runners(folder: Path, files: dict[str, str] | None = None, threads: int = 1) -> MTCNNRunners:
    """ONNX Runtime runners over the three files in ``folder``."""
    names = files or MTCNN_FILES

    def wrap(role: str) -> Runner:
        session = _session((folder / names[role]).read_bytes(), threads)

        def run(batch: np.ndarray) -> list[np.ndarray]:
            return [np.asarray(out) for out in session.run(None, {"images": batch.astype(np.float32)})]

        return run

    return MTCNNRunners(wrap("pnet"), wrap("rnet"), wrap("onet"))
