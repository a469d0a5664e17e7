"""Landmark files, the face crop the landmark model sees, and running the model (torch or ONNX Runtime).

Crop convention (training and inference alike): a square of side ``crop_scale * max(box w, box h)`` centred
on the detector's box, warped to ``input_size`` pixels; points map through the same 2x3 matrix.
Five points: left eye centre, right eye centre, nose tip, left mouth corner, right mouth corner (image left
and right), from a 68-point 300-W markup as ``[P[36:42].mean, P[42:48].mean, P[30], P[48], P[54]]``.
"""

from __future__ import annotations

import math
import re

import numpy as np
from PIL import Image

from facefleet.faces.align import warp

FIVE = 5
FLIP_ORDER = [1, 0, 2, 4, 3]  # a mirrored face swaps the eyes and the mouth corners
DEFAULT_CROP_SCALE = 1.15
OUTSIDE_SLACK_PX = 1.0


class LandmarkFileError(ValueError):
    """A landmark file that cannot be used (the message names the problem; the caller names the file)."""


def five_from_68(points: np.ndarray) -> np.ndarray:
    return np.stack(
        [points[36:42].mean(0), points[42:48].mean(0), points[30], points[48], points[54]]
    ).astype(np.float64)


def parse_pts(text: str) -> np.ndarray:
    """A ``.pts`` file (300-W with or without its version/n_points/braces header) -> (N, 2) float64."""
    rows: list[tuple[float, float]] = []
    declared: int | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line in ("{", "}") or line.startswith("version"):
            continue
        match = re.fullmatch(r"n_points\s*:\s*(\d+)", line)
        if match:
            declared = int(match.group(1))
            continue
        parts = line.split()
        if len(parts) != 2:
            raise LandmarkFileError(f"line {number}: expected 'x y', got {line[:40]!r}")
        try:
            x, y = float(parts[0]), float(parts[1])
        except ValueError:
            raise LandmarkFileError(f"line {number}: {line[:40]!r} is not two numbers") from None
        rows.append((x, y))
    if declared is not None and declared != len(rows):
        raise LandmarkFileError(f"the header says {declared} points but the file holds {len(rows)}")
    return np.asarray(rows, dtype=np.float64).reshape(-1, 2)


def checked_five_points(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Five points from a 68- or 5-point markup, refusing NaNs and points outside the image."""
    if len(points) not in (68, FIVE):
        raise LandmarkFileError(f"{len(points)} points; expected 68 (300-W markup) or 5")
    if not np.isfinite(points).all():
        raise LandmarkFileError("holds NaN or infinite coordinates")
    # One pixel of slack: resized markups land up to 0.4 px past the border (3 of HELEN's 330 files).
    x, y = points[:, 0], points[:, 1]
    slack = OUTSIDE_SLACK_PX
    outside = (x < -slack) | (x > width + slack) | (y < -slack) | (y > height + slack)
    if outside.any():
        index = int(np.flatnonzero(outside)[0])
        px, py = points[index]
        raise LandmarkFileError(f"point {index} ({px:.1f}, {py:.1f}) lies outside the {width}x{height} image")
    return five_from_68(points) if len(points) == 68 else points.astype(np.float64)


def crop_matrix(
    box: tuple[float, float, float, float] | np.ndarray,
    size: int,
    *,
    crop_scale: float = DEFAULT_CROP_SCALE,
    angle: float = 0.0,
    shift: tuple[float, float] = (0.0, 0.0),
    zoom: float = 1.0,
    flip: bool = False,
) -> np.ndarray:
    """2x3 image->crop matrix; ``angle`` (radians), ``shift`` (in crop sides) and ``zoom`` jitter training."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1) * crop_scale / zoom
    cx = (x1 + x2) / 2 + shift[0] * side
    cy = (y1 + y2) / 2 + shift[1] * side
    scale = size / side
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    linear = np.array([[cos, -sin], [sin, cos]])
    if flip:
        linear = np.array([[-1.0, 0.0], [0.0, 1.0]]) @ linear
    centre = np.array([size / 2, size / 2])
    translation = centre - linear @ np.array([cx, cy])
    return np.concatenate([linear, translation[:, None]], axis=1)


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def invert(matrix: np.ndarray) -> np.ndarray:
    full = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))
    return full[:2]


def crop_input(image: Image.Image, matrix: np.ndarray, size: int) -> np.ndarray:
    """3 x size x size float32 in [-1, 1] (the landmark model's input)."""
    pixels = np.asarray(warp(image, matrix, size), dtype=np.float32)
    return ((pixels / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)


class OnnxLandmarkLocator:
    """A registered landmark model's ONNX graph (crops -> points in crop pixels) behind ``locate``."""

    def __init__(self, onnx_bytes: bytes, input_size: int, crop_scale: float = DEFAULT_CROP_SCALE) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.input_size = input_size
        self.crop_scale = crop_scale

    def locate(self, image: Image.Image, box: tuple[float, float, float, float]) -> np.ndarray:
        matrix = crop_matrix(box, self.input_size, crop_scale=self.crop_scale)
        batch = crop_input(image, matrix, self.input_size)[None]
        points = np.asarray(self.session.run(None, {self.input_name: batch})[0][0], dtype=np.float64)
        return apply(invert(matrix), points)
