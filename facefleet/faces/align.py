"""Five points -> the ArcFace 112x112 template: Umeyama similarity transform, warp, and which face to keep.

Face choice rule (when a photo holds several faces, the label belongs to one of them): each detection gets
``score = (box area / image area) * (1 - d / d_max)`` where ``d`` is the distance from the box centre to
the image centre and ``d_max`` half the image diagonal; the face with the highest score is kept ("largest
times most central"). Ties go to the higher detector probability.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from facefleet.faces.detect import Detection

ALIGNED_SIZE = 112
# insightface's arcface_dst: left eye, right eye, nose tip, left mouth corner, right mouth corner (pixels).
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 similarity (rotation, uniform scale, translation) taking ``src`` onto ``dst`` (least squares).

    Umeyama (1991), without reflection. ``src`` and ``dst`` are (N, 2), N >= 2.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"umeyama needs two (N, 2) arrays with N >= 2, got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("umeyama needs finite points")
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    covariance = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rotation = u @ sign @ vt
    variance = (src_c**2).sum() / len(src)
    if variance <= 0:
        raise ValueError("umeyama needs points that are not all equal")
    scale = float(np.trace(np.diag(singular) @ sign)) / variance
    translation = dst_mean - scale * rotation @ src_mean
    return np.concatenate([scale * rotation, translation[:, None]], axis=1)


def warp(image: Image.Image, matrix: np.ndarray, size: int = ALIGNED_SIZE) -> Image.Image:
    """Apply the 2x3 image->output ``matrix``: a size x size RGB crop (bilinear, black outside the image)."""
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(full)  # PIL maps output pixels back to input pixels
    coefficients = tuple(float(v) for v in inverse[:2].reshape(-1))
    return image.convert("RGB").transform(
        (size, size), Image.Transform.AFFINE, coefficients, resample=Image.Resampling.BILINEAR
    )


def align_points(image: Image.Image, points: np.ndarray, size: int = ALIGNED_SIZE) -> Image.Image:
    """Warp ``image`` so its five points land on the ArcFace template (scaled to ``size``)."""
    template = ARCFACE_TEMPLATE * (size / ALIGNED_SIZE)
    return warp(image, umeyama(points, template), size)


def choice_score(detection: Detection, width: int, height: int) -> float:
    """(box area / image area) * (1 - distance of the box centre from the image centre / half diagonal)."""
    x1, y1, x2, y2 = detection.box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half_diagonal = math.hypot(width, height) / 2
    centrality = max(0.0, 1.0 - math.hypot(cx - width / 2, cy - height / 2) / half_diagonal)
    return detection.area / float(width * height) * centrality


def choose_face(detections: Sequence[Detection], width: int, height: int) -> Detection | None:
    """The annotated face by the rule in the module docstring; None when there is none."""
    if not detections:
        return None
    return max(detections, key=lambda d: (choice_score(d, width, height), d.score))


def encode_jpeg(image: Image.Image, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
