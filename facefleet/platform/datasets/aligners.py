"""Turn an aligner spec ('mtcnn', '<landmark model>' or '<landmark model>@<version>') into an Aligner."""

from __future__ import annotations

import functools
import re

from sqlalchemy.orm import Session

from facefleet.faces.aligner import MTCNN_NAME, Aligner, MTCNNAligner, mtcnn_aligner
from facefleet.faces.weights import MTCNNWeightsMissingError
from facefleet.platform.datasets.schemas import ALIGNER_PATTERN
from facefleet.platform.errors import InvalidInputError
from facefleet.platform.store.base import ObjectStore


@functools.lru_cache(maxsize=1)
def _cached_mtcnn() -> MTCNNAligner:
    return mtcnn_aligner()


def shared_mtcnn() -> MTCNNAligner:
    """One MTCNN per process; InvalidInputError when its weights are not installed."""
    try:
        return _cached_mtcnn()
    except MTCNNWeightsMissingError as error:
        raise InvalidInputError(f"cannot detect faces: {error}", field="aligner") from None


def resolve_aligner(session: Session, store: ObjectStore, spec: str) -> Aligner:
    if not re.match(ALIGNER_PATTERN, spec or ""):
        raise InvalidInputError(
            f"aligner {spec!r} is not valid: use 'mtcnn' or a landmark model '<name>' or '<name>@<version>'",
            field="aligner",
        )
    detector = shared_mtcnn()
    if spec == MTCNN_NAME:
        return detector
    from facefleet.platform.datasets.landmark_aligner import landmark_model_aligner

    return landmark_model_aligner(session, store, spec, detector)
