"""An aligner from a registered landmark model: MTCNN finds the box, the model (ONNX Runtime) the points."""

from __future__ import annotations

import hashlib

from sqlalchemy.orm import Session

from facefleet.faces.aligner import MTCNNAligner
from facefleet.platform.errors import InvalidInputError, NotFoundError
from facefleet.platform.models.card import ModelCard
from facefleet.platform.models.service import CARD_FILE, get_model_version, version_prefix
from facefleet.platform.store.base import ObjectStore


def landmark_model_aligner(
    session: Session, store: ObjectStore, spec: str, detector: MTCNNAligner
) -> MTCNNAligner:
    name, _, number = spec.partition("@")
    try:
        model = get_model_version(session, name, number or "latest")
    except NotFoundError:
        which = f"version {number} of " if number else ""
        raise InvalidInputError(
            f"no landmark model named {name!r} ({which}registry): train one with a run of kind 'landmarks' "
            "or use --aligner mtcnn",
            field="aligner",
        ) from None
    card = ModelCard.model_validate_json(
        store.get_bytes(f"{version_prefix(name, model.version)}/{CARD_FILE}")
    )
    artifact = model.artifacts.get("model.onnx")
    if card.kind != "landmarks" or artifact is None:
        raise InvalidInputError(
            f"model {name}@{model.version} is not a landmark model (kind {card.kind!r}); "
            "use --aligner mtcnn or a model trained by a 'landmarks' run",
            field="aligner",
        )
    data = store.get_bytes(str(artifact["key"]))
    if hashlib.sha256(data).hexdigest() != artifact["sha256"]:
        raise InvalidInputError(f"model {name}@{model.version}: model.onnx does not match its SHA-256")
    from facefleet.faces.landmarks import DEFAULT_CROP_SCALE, OnnxLandmarkLocator

    crop_scale = float(card.config.get("landmarks", {}).get("crop_scale", DEFAULT_CROP_SCALE))
    locator = OnnxLandmarkLocator(data, card.input.size, crop_scale)
    return MTCNNAligner(detector.runners, locator=locator, name=name, version=str(model.version))
