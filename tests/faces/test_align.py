"""MTCNN on real photos, the face choice rule, NMS and the Umeyama transform to the ArcFace template."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from facefleet.faces.align import ARCFACE_TEMPLATE, align_points, choose_face, umeyama
from facefleet.faces.aligner import mtcnn_aligner
from facefleet.faces.detect import Detection, nms
from tests.faces.benchdata import benchdata


def five_points(points68: np.ndarray) -> np.ndarray:
    return np.stack(
        [points68[36:42].mean(0), points68[42:48].mean(0), points68[30], points68[48], points68[54]]
    )


def test_umeyama_recovers_a_similarity() -> None:
    angle, scale, shift = 0.3, 1.7, np.array([5.0, -2.0])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    src = ARCFACE_TEMPLATE
    dst = scale * src @ rotation.T + shift
    matrix = umeyama(src, dst)
    np.testing.assert_allclose(matrix[:, :2], scale * rotation, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-9)
    with pytest.raises(ValueError, match="finite"):
        umeyama(np.full((5, 2), np.nan), dst)


def test_align_points_puts_the_points_on_the_template() -> None:
    # A synthetic image with bright dots at five points; after alignment the dots sit on the template.
    image = Image.new("RGB", (300, 260))
    points = ARCFACE_TEMPLATE * 1.9 + np.array([60.0, 30.0])
    for x, y in points:
        for dx in range(-2, 3):
            for dy in range(-2, 3):
                image.putpixel((int(round(x)) + dx, int(round(y)) + dy), (255, 255, 255))
    aligned = np.asarray(align_points(image, points), dtype=np.float64).sum(2)
    assert aligned.shape == (112, 112)
    for x, y in ARCFACE_TEMPLATE:
        assert aligned[int(round(y)), int(round(x))] > 300


def _detection(box: tuple[float, float, float, float], score: float = 0.99) -> Detection:
    return Detection(box=box, score=score, points=np.zeros((5, 2)))


def test_choose_face_prefers_large_and_central() -> None:
    centre = _detection((80, 80, 120, 120))  # 40 px, centred in a 200x200 image
    corner_big = _detection((0, 0, 50, 50))  # 50 px but in the corner
    chosen = choose_face([corner_big, centre], 200, 200)
    assert chosen is centre
    assert choose_face([], 200, 200) is None
    bigger_central = _detection((70, 70, 130, 130))
    assert choose_face([centre, bigger_central], 200, 200) is bigger_central


def test_nms_union_and_min() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [2, 2, 6, 6]], dtype=float)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    assert nms(boxes, scores, 0.5).tolist() == [3, 0, 2]
    assert nms(boxes, scores, 0.5, "min").tolist() == [3, 2]  # the small box lies inside the others
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


def test_mtcnn_finds_helen_faces_and_their_points() -> None:
    folder = benchdata("helen_landmarks") / "testset"
    aligner = mtcnn_aligner()
    errors = []
    for path in sorted(folder.glob("*.jpg"))[:4]:
        points68 = np.loadtxt(path.with_suffix(".pts"))
        with Image.open(path) as image:
            outcome = aligner.align(image)
        assert outcome.status == "aligned", path.name
        assert outcome.image is not None and outcome.image.size == (112, 112)
        inter_ocular = np.linalg.norm(points68[36] - points68[45])
        assert outcome.points is not None
        errors.append(np.linalg.norm(outcome.points - five_points(points68), axis=1).mean() / inter_ocular)
    # Measured on these four images: 0.041, 0.130, 0.077, 0.025 (deterministic: pretrained weights).
    assert float(np.median(errors)) < 0.08, errors


def test_no_face_is_an_outcome_not_an_error() -> None:
    aligner = mtcnn_aligner()
    blank = Image.new("RGB", (160, 120), (90, 120, 200))
    outcome = aligner.align(blank)
    assert (outcome.status, outcome.faces, outcome.image) == ("no_face", 0, None)
    assert "no face" in outcome.reason
