"""Aligners: detect the faces of a photo, pick the annotated one, locate five points, warp to 112x112.

``mtcnn`` uses MTCNN's own five points; a landmark model aligner (``<model>[@version]``) uses MTCNN for the
box and facefleet's landmark model (seed 001) for the points. Every call returns an outcome that says what
happened, so registration can record it per image and never crashes on a photo without a face.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from PIL import Image

from facefleet.faces.align import align_points, choose_face
from facefleet.faces.detect import Detection, MTCNNRunners, detect_faces

MTCNN_NAME = "mtcnn"
MTCNN_VERSION = "facenet-pytorch-2.6.0"
Status = Literal["aligned", "no_face"]


@dataclass(frozen=True)
class AlignOutcome:
    status: Status
    faces: int  # faces the detector found
    image: Image.Image | None = None  # the 112x112 aligned crop when status == "aligned"
    box: tuple[float, float, float, float] | None = None
    points: np.ndarray | None = None  # (5, 2) in the source image's pixels

    @property
    def reason(self) -> str:
        return "the detector found no face" if self.status == "no_face" else ""


class Aligner(Protocol):
    name: str
    version: str

    def align(self, image: Image.Image) -> AlignOutcome: ...


class PointLocator(Protocol):
    """Five points of the face in ``box`` (a landmark model)."""

    def locate(self, image: Image.Image, box: tuple[float, float, float, float]) -> np.ndarray: ...


class MTCNNAligner:
    """MTCNN detection; points from MTCNN (``locator`` None) or from a landmark model."""

    def __init__(
        self,
        runners: MTCNNRunners,
        *,
        locator: PointLocator | None = None,
        name: str = MTCNN_NAME,
        version: str = MTCNN_VERSION,
        min_face: int = 20,
    ) -> None:
        self.runners = runners
        self.locator = locator
        self.name = name
        self.version = version
        self.min_face = min_face

    def detect(self, image: Image.Image) -> list[Detection]:
        return detect_faces(image, self.runners, min_face=self.min_face)

    def align(self, image: Image.Image) -> AlignOutcome:
        rgb = image.convert("RGB")
        detections = self.detect(rgb)
        chosen = choose_face(detections, *rgb.size)
        if chosen is None:
            return AlignOutcome("no_face", 0)
        points = chosen.points if self.locator is None else self.locator.locate(rgb, chosen.box)
        return AlignOutcome("aligned", len(detections), align_points(rgb, points), chosen.box, points)


def mtcnn_aligner() -> MTCNNAligner:
    """MTCNN with the wheel's weights through PyTorch."""
    from facefleet.faces.detect import torch_runners

    return MTCNNAligner(torch_runners())
