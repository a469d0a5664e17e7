"""Landmarks datasets (``kind=landmarks``): check every markup, fix the held-out split, find each face's box.

A markup with the wrong number of points, NaNs or points outside its image refuses the whole registration,
naming the file. Each image's face box comes from MTCNN (the detection holding most of the five points,
then the largest overlap with the points' bounding box), so training crops look like what the aligner
feeds the model at inference; when MTCNN misses the face, the points' bounding box (enlarged) stands in.
The held-out split is fixed by the file name: SHA-256(relpath) mod 5 == 0 -> ``test`` (about 20%).
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from facefleet.faces.detect import Detection, MTCNNRunners, detect_faces
from facefleet.faces.landmarks import LandmarkFileError, checked_five_points, parse_pts
from facefleet.platform.datasets import layout
from facefleet.platform.datasets.formats import ScannedSource
from facefleet.platform.datasets.schemas import LandmarkReport
from facefleet.platform.datasets.validation import CheckedImage, DatasetInvalidError, StageProgress
from facefleet.platform.store.base import ObjectStore

LANDMARKS_SCHEMA = pa.schema(
    [
        ("member", pa.string()),
        ("split", pa.string()),  # train | test
        ("points", pa.list_(pa.float64())),  # 10 values: x0 y0 x1 y1 ... (five points, image pixels)
        ("box", pa.list_(pa.float64())),  # x1 y1 x2 y2 (image pixels)
        ("box_source", pa.string()),  # detector | points
    ]
)


def split_of(relpath: str) -> str:
    return "test" if int(hashlib.sha256(relpath.encode()).hexdigest()[:8], 16) % 5 == 0 else "train"


def read_points(scanned: ScannedSource, item: CheckedImage, digest: str) -> np.ndarray:
    relpath = item.source.relpath
    pts_name = relpath.rsplit(".", 1)[0] + ".pts"
    try:
        text = scanned.landmarks[relpath]().decode("utf-8")
        return checked_five_points(parse_pts(text), item.width, item.height)
    except (LandmarkFileError, UnicodeDecodeError) as error:
        raise DatasetInvalidError(f"landmark file {pts_name}: {error}", content_hash=digest) from None


def _box_for(points: np.ndarray, detections: list[Detection]) -> tuple[list[float], str]:
    x1, y1 = points.min(0)
    x2, y2 = points.max(0)

    def inside(d: Detection) -> int:
        bx1, by1, bx2, by2 = d.box
        return int(
            (
                (points[:, 0] >= bx1) & (points[:, 0] <= bx2) & (points[:, 1] >= by1) & (points[:, 1] <= by2)
            ).sum()
        )

    def overlap(d: Detection) -> float:
        bx1, by1, bx2, by2 = d.box
        w = max(0.0, min(bx2, x2) - max(bx1, x1))
        h = max(0.0, min(by2, y2) - max(by1, y1))
        return w * h / max(d.area, 1e-9)

    holding = [d for d in detections if inside(d) >= 4]
    if holding:
        best = max(holding, key=lambda d: (inside(d), overlap(d)))
        return [float(v) for v in best.box], "detector"
    # Five points span about half a face: enlarge their box to a face-sized one.
    cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2 + 0.1 * (y2 - y1), max(x2 - x1, y2 - y1) * 1.9
    return [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], "points"


def landmark_table(
    scanned: ScannedSource,
    kept: list[CheckedImage],
    runners: MTCNNRunners,
    digest: str,
    progress: StageProgress | None = None,
) -> tuple[pa.Table, LandmarkReport]:
    """Check every markup first (fail fast, naming the file), then detect each face's box."""
    points = [read_points(scanned, item, digest) for item in kept]
    rows: dict[str, list[object]] = {name: [] for name in LANDMARKS_SCHEMA.names}
    report = LandmarkReport()
    for index, (item, five) in enumerate(zip(kept, points, strict=True), 1):
        with Image.open(io.BytesIO(item.source.read())) as image:
            detections = detect_faces(image, runners)
        box, source = _box_for(five, detections)
        split = split_of(item.source.relpath)
        rows["member"].append(item.source.relpath)
        rows["split"].append(split)
        rows["points"].append([float(v) for v in five.reshape(-1)])
        rows["box"].append(box)
        rows["box_source"].append(source)
        report.faces += 1
        report.test_faces += split == "test"
        report.boxes_from_points += source == "points"
        if progress is not None:
            progress("finding face boxes", index, len(kept))
    report.train_faces = report.faces - report.test_faces
    return pa.Table.from_pydict(rows, schema=LANDMARKS_SCHEMA), report


def write_landmarks(store: ObjectStore, name: str, number: int, table: pa.Table) -> str:
    key = layout.landmarks_key(name, number)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    store.put_bytes(key, buffer.getvalue(), content_type="application/vnd.apache.parquet")
    return key


def read_landmarks(store: ObjectStore, name: str, number: int) -> pa.Table:
    return pq.read_table(io.BytesIO(store.get_bytes(layout.landmarks_key(name, number))))
