"""Which aligner a recognition model was trained with, and its ONNX files for the terminal bundle.

The aligner is read from the training dataset versions' reports (``--align``). Unaligned training data: no
aligner (terminals embed frames as they come, as before). Aligned data: MTCNN's three networks are exported
to ONNX next to the model, plus the landmark model's ONNX when the points came from one; the card names them.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from facefleet.platform.db.models import DatasetVersion
from facefleet.platform.models.card import AlignerSpec, ModelCard
from facefleet.platform.models.service import CARD_FILE, get_model_version, version_prefix
from facefleet.platform.store import ObjectStore

log = logging.getLogger(__name__)
LANDMARKS_FILE = "landmarks.onnx"


def training_aligner(session: Session, dataset_version_ids: Sequence[int]) -> tuple[str, str] | None:
    """(aligner name, version) shared by the training versions; None when they were not aligned."""
    reports = session.scalars(
        select(DatasetVersion.report).where(DatasetVersion.id.in_(list(dataset_version_ids)))
    )
    found = {
        (str(report["alignment"]["aligner"]), str(report["alignment"]["aligner_version"]))
        for report in reports
        if report and report.get("alignment")
    }
    if not found:
        return None
    if len(found) > 1:
        log.warning(
            "training versions were aligned by different aligners %s; the bundle uses the first", found
        )
    return sorted(found)[0]


def write_aligner_files(
    session: Session, store: ObjectStore, aligner: tuple[str, str], folder: Path
) -> AlignerSpec:
    from facefleet.faces.aligner import MTCNN_NAME
    from facefleet.faces.onnx_export import export_mtcnn

    name, version = aligner
    files = export_mtcnn(folder)
    spec = AlignerSpec(name=name, version=version, files=files)
    if name == MTCNN_NAME:
        return spec
    model = get_model_version(session, name, version)
    card = ModelCard.model_validate_json(
        store.get_bytes(f"{version_prefix(name, model.version)}/{CARD_FILE}")
    )
    artifact = model.artifacts["model.onnx"]
    data = store.get_bytes(str(artifact["key"]))
    if hashlib.sha256(data).hexdigest() != artifact["sha256"]:
        raise RuntimeError(f"landmark model {name}@{version}: model.onnx does not match its SHA-256")
    (folder / LANDMARKS_FILE).write_bytes(data)
    spec.files["landmarks"] = LANDMARKS_FILE
    spec.landmark_input_size = card.input.size
    spec.crop_scale = float(card.config.get("landmarks", {}).get("crop_scale", 1.15))
    return spec
