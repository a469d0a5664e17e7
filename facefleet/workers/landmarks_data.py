"""Landmark training data: faces of landmarks dataset versions, pre-cropped once, augmented per step.

Each face is warped once to a ``2 * input_size`` square around its box with room for augmentation (that is
all a worker keeps in memory); each sample then draws a rotation, shift, zoom and mirror from it.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from facefleet.faces.align import warp
from facefleet.faces.landmarks import FLIP_ORDER, apply, crop_input, crop_matrix
from facefleet.platform.datasets import shards
from facefleet.platform.datasets.landmark_data import read_landmarks
from facefleet.platform.runs.schemas import LandmarkConfig
from facefleet.platform.store.base import ObjectStore

ROOM = 1.6  # the cached square is this much larger than the training crop


@dataclass
class FaceSample:
    member: str
    image: Image.Image  # the cached square
    box: np.ndarray  # the face box in the square's pixels
    points: np.ndarray  # (5, 2) in the square's pixels
    to_source: np.ndarray  # 2x3: square pixels -> source image pixels
    source_points: np.ndarray  # (5, 2) in the source image (for NME)


def load_faces(
    store: ObjectStore,
    datasets: list[tuple[str, int, str]],
    split: str,
    input_size: int,
    crop_scale: float,
) -> list[FaceSample]:
    """Faces of ``split`` ('train' or 'test') from (name, version, manifest key) triples."""
    faces: list[FaceSample] = []
    size = 2 * input_size
    for name, version, manifest_key in datasets:
        manifest = {row["member"]: row for row in shards.read_manifest(store, manifest_key).to_pylist()}
        for row in read_landmarks(store, name, version).to_pylist():
            if row["split"] != split:
                continue
            entry = manifest[row["member"]]
            data = shards.read_range(store, entry["shard"], entry["offset"], entry["size"])
            box = np.asarray(row["box"], dtype=np.float64)
            points = np.asarray(row["points"], dtype=np.float64).reshape(5, 2)
            matrix = crop_matrix(box, size, crop_scale=crop_scale * ROOM)
            with Image.open(io.BytesIO(data)) as image:
                square = warp(image, matrix, size)
            corners = apply(matrix, box.reshape(2, 2)).reshape(-1)
            inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
            faces.append(FaceSample(row["member"], square, corners, apply(matrix, points), inverse, points))
    return faces


def sample_batch(
    faces: list[FaceSample],
    batch_size: int,
    input_size: int,
    config: LandmarkConfig,
    rng: np.random.Generator,
    augment: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images B x 3 x S x S, points B x 5 x 2 in crop pixels)."""
    images, targets = [], []
    for index in rng.integers(0, len(faces), size=batch_size):
        face = faces[int(index)]
        if augment:
            angle = math.radians(rng.uniform(-config.rotation_degrees, config.rotation_degrees))
            shift = (rng.uniform(-config.shift, config.shift), rng.uniform(-config.shift, config.shift))
            zoom = math.exp(rng.uniform(-config.zoom, config.zoom))
            flip = bool(config.flip and rng.random() < 0.5)
        else:
            angle, shift, zoom, flip = 0.0, (0.0, 0.0), 1.0, False
        matrix = crop_matrix(
            face.box, input_size, crop_scale=config.crop_scale, angle=angle, shift=shift, zoom=zoom, flip=flip
        )
        points = apply(matrix, face.points)
        if flip:
            points = points[FLIP_ORDER]
        images.append(crop_input(face.image, matrix, input_size))
        targets.append(points)
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(targets)).float()


def eval_inputs(
    faces: list[FaceSample], input_size: int, crop_scale: float
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Un-augmented crops of every face and each crop's crop->source matrix (for points in source pixels)."""
    batch, back = [], []
    for face in faces:
        matrix = crop_matrix(face.box, input_size, crop_scale=crop_scale)
        batch.append(crop_input(face.image, matrix, input_size))
        crop_to_square = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))
        back.append((np.vstack([face.to_source, [0.0, 0.0, 1.0]]) @ crop_to_square)[:2])
    return np.stack(batch), back


def nme(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Mean point error / distance between the two eye centres (five-point inter-ocular normalisation)."""
    inter_ocular = float(np.linalg.norm(truth[0] - truth[1]))
    return float(np.linalg.norm(predicted - truth, axis=1).mean() / max(inter_ocular, 1e-9))
