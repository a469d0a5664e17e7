"""MTCNN's three-stage cascade on one RGB image, in numpy, over pluggable network runners.

The same pipeline runs the PyTorch networks (registration, benchmarks) and their ONNX exports (terminals):
a runner takes a float32 NCHW batch scaled to [-1, 1] and returns the network's outputs as numpy arrays.
Follows facenet-pytorch's ``detect_face`` (thresholds 0.6/0.7/0.7, pyramid factor 0.709), with our own NMS.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

Runner = Callable[[np.ndarray], Sequence[np.ndarray]]


@dataclass(frozen=True)
class MTCNNRunners:
    pnet: Runner
    rnet: Runner
    onet: Runner


@dataclass(frozen=True)
class Detection:
    """One face: box (x1, y1, x2, y2) in pixels, face probability, five points (eyes, nose, mouth corners)."""

    box: tuple[float, float, float, float]
    score: float
    points: np.ndarray  # (5, 2) float64, x then y

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression; indices kept, best first. ``method`` 'union' (IoU) or 'min'."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = (boxes[:, i].astype(np.float64) for i in range(4))
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = w * h
        if method == "min":
            overlap = inter / np.minimum(area[best], area[rest])
        else:
            overlap = inter / (area[best] + area[rest] - inter)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _normalise(pixels: np.ndarray) -> np.ndarray:
    """HxWx3 uint8/float -> 1x3xHxW float32 in [-1, 1] (MTCNN's input scaling)."""
    return ((pixels.astype(np.float32) - 127.5) * 0.0078125).transpose(2, 0, 1)[None]


def _resize(image: Image.Image, width: int, height: int) -> np.ndarray:
    return np.asarray(image.resize((width, height), Image.Resampling.BOX), dtype=np.float32)


def _square(boxes: np.ndarray) -> np.ndarray:
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    out[:, 0] += reg[:, 0] * w
    out[:, 1] += reg[:, 1] * h
    out[:, 2] += reg[:, 2] * w
    out[:, 3] += reg[:, 3] * h
    return out


def _crops(image: Image.Image, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Crops of the (integer, clipped) boxes resized to size x size; and which boxes gave a crop."""
    width, height = image.size
    batch: list[np.ndarray] = []
    valid: list[bool] = []
    for x1, y1, x2, y2 in np.trunc(boxes[:, :4]).astype(np.int64):
        left, top = max(int(x1), 1) - 1, max(int(y1), 1) - 1
        right, bottom = min(int(x2), width), min(int(y2), height)
        if right <= left or bottom <= top:
            valid.append(False)
            continue
        valid.append(True)
        batch.append(_normalise(_resize(image.crop((left, top, right, bottom)), size, size))[0])
    if not batch:
        return np.zeros((0, 3, size, size), np.float32), np.asarray(valid, bool)
    return np.stack(batch), np.asarray(valid, bool)


def _run_batched(runner: Runner, batch: np.ndarray, chunk: int = 256) -> list[np.ndarray]:
    outs = [list(runner(batch[i : i + chunk])) for i in range(0, len(batch), chunk)]
    return [np.concatenate(parts) for parts in zip(*outs, strict=True)]


def detect_faces(
    image: Image.Image,
    runners: MTCNNRunners,
    *,
    min_face: int = 20,
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
    factor: float = 0.709,
) -> list[Detection]:
    """Every face MTCNN finds in ``image`` (any mode; converted to RGB), best score first."""
    rgb = image.convert("RGB")
    width, height = rgb.size
    scale = 12.0 / min_face
    shortest = min(width, height) * scale
    scales: list[float] = []
    while shortest >= 12:
        scales.append(scale)
        scale *= factor
        shortest *= factor

    # Stage 1: P-Net over the pyramid.
    candidates: list[np.ndarray] = []
    for s in scales:
        pixels = _resize(rgb, int(width * s + 1), int(height * s + 1))
        reg, prob = runners.pnet(_normalise(pixels))[:2]
        face = prob[0, 1]
        ys, xs = np.nonzero(face >= thresholds[0])
        if len(ys) == 0:
            continue
        q1 = np.floor((2 * np.stack([xs, ys], 1) + 1) / s)
        q2 = np.floor((2 * np.stack([xs, ys], 1) + 12) / s)
        boxes = np.concatenate([q1, q2, face[ys, xs][:, None], reg[0][:, ys, xs].T], axis=1).astype(
            np.float64
        )
        candidates.append(boxes[nms(boxes[:, :4], boxes[:, 4], 0.5)])
    if not candidates:
        return []
    boxes = np.concatenate(candidates)
    boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
    boxes = _square(np.concatenate([_regress(boxes[:, :4], boxes[:, 5:9]), boxes[:, 4:5]], axis=1))

    # Stage 2: R-Net on 24x24 crops.
    crops, valid = _crops(rgb, boxes, 24)
    boxes = boxes[valid]
    if len(boxes) == 0:
        return []
    reg, prob = _run_batched(runners.rnet, crops)
    keep = prob[:, 1] > thresholds[1]
    boxes = np.concatenate([boxes[keep, :4], prob[keep, 1:2]], axis=1)
    reg = reg[keep]
    pick = nms(boxes[:, :4], boxes[:, 4], 0.7)
    boxes = _square(np.concatenate([_regress(boxes[pick, :4], reg[pick]), boxes[pick, 4:5]], axis=1))

    # Stage 3: O-Net on 48x48 crops: final boxes and landmarks.
    crops, valid = _crops(rgb, boxes, 48)
    boxes = boxes[valid]
    if len(boxes) == 0:
        return []
    reg, marks, prob = _run_batched(runners.onet, crops)
    keep = prob[:, 1] > thresholds[2]
    boxes, reg, marks = boxes[keep], reg[keep], marks[keep]
    boxes[:, 4] = prob[keep, 1]
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    px = w[:, None] * marks[:, :5] + boxes[:, 0:1] - 1
    py = h[:, None] * marks[:, 5:] + boxes[:, 1:2] - 1
    points = np.stack([px, py], axis=2)
    boxes = np.concatenate([_regress(boxes[:, :4], reg), boxes[:, 4:5]], axis=1)
    pick = nms(boxes[:, :4], boxes[:, 4], 0.7, "min")
    return [
        Detection(
            box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
            score=float(b[4]),
            points=points[i].astype(np.float64),
        )
        for i, b in zip(pick, boxes[pick], strict=True)
    ]


def torch_runners() -> MTCNNRunners:
    """Runners over the PyTorch networks loaded from the facenet-pytorch wheel."""
    import torch

    from facefleet.faces.weights import load_mtcnn

    pnet, rnet, onet = load_mtcnn()

    def wrap(net: torch.nn.Module) -> Runner:
        def run(batch: np.ndarray) -> list[np.ndarray]:
            with torch.inference_mode():
                return [out.numpy() for out in net(torch.from_numpy(np.ascontiguousarray(batch)))]

        return run

    return MTCNNRunners(wrap(pnet), wrap(rnet), wrap(onet))
