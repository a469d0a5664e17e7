"""The ``align`` stage of registration: every decodable image -> an aligned 112x112 JPEG, or skipped.

Runs between decoding and validation: images without a face leave the candidate list (the report lists them
with the reason), the others are replaced by their aligned crop (new bytes, new sha256, 112x112), so the
validation policy (small identities, pairs) applies to what is actually packed. The per-image outcome of
every attempted image is kept for ``alignment.json`` next to the shards.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from facefleet.faces.align import ALIGNED_SIZE, encode_jpeg
from facefleet.faces.aligner import Aligner
from facefleet.platform.datasets.formats import SourceImage
from facefleet.platform.datasets.schemas import AlignmentReport, ProblemFile
from facefleet.platform.datasets.validation import MAX_LISTED, CheckedImage, StageProgress


@dataclass
class AlignedContent:
    images: list[CheckedImage]  # aligned images (and the undecodable ones, unchanged, for the corrupt list)
    report: AlignmentReport
    outcomes: list[dict[str, Any]] = field(default_factory=list)


def _bytes_reader(data: bytes) -> Any:
    return lambda: data


def align_checked(
    checked: list[CheckedImage], aligner: Aligner, progress: StageProgress | None = None
) -> AlignedContent:
    report = AlignmentReport(aligner=aligner.name, aligner_version=aligner.version, size=ALIGNED_SIZE)
    out: list[CheckedImage] = []
    outcomes: list[dict[str, Any]] = []
    attempt = [item for item in checked if item.error is None]
    for item in checked:
        if item.error is not None:
            out.append(item)
            continue
        with Image.open(io.BytesIO(item.source.read())) as decoded:
            outcome = aligner.align(decoded)
        record: dict[str, Any] = {
            "path": item.source.relpath,
            "status": outcome.status,
            "faces": outcome.faces,
        }
        report.attempted += 1
        if outcome.status != "aligned" or outcome.image is None:
            report.no_face += 1
            if len(report.no_face_images) < MAX_LISTED:
                report.no_face_images.append(ProblemFile(path=item.source.relpath, reason=outcome.reason))
            record["reason"] = outcome.reason
        else:
            report.aligned += 1
            if outcome.faces > 1:
                report.several_faces += 1
                if len(report.several_faces_images) < MAX_LISTED:
                    report.several_faces_images.append(item.source.relpath)
            data = encode_jpeg(outcome.image)
            aligned_source = SourceImage(item.source.relpath, item.source.identity, _bytes_reader(data))
            out.append(
                CheckedImage(
                    aligned_source, hashlib.sha256(data).hexdigest(), ALIGNED_SIZE, ALIGNED_SIZE, None
                )
            )
            record["source_sha256"] = item.sha256
            record["box"] = [round(v, 2) for v in outcome.box or ()]
            if outcome.points is not None:
                record["points"] = [[round(float(x), 2), round(float(y), 2)] for x, y in outcome.points]
        outcomes.append(record)
        if progress is not None:
            progress("aligning faces", report.attempted, len(attempt))
    return AlignedContent(out, report, outcomes)
