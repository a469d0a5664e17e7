"""Which verification attempts a terminal uploads for inspection (the assignment says), and what it sends.

The terminal keeps the last collection settings its assignment carried in ``collection.json``, so it keeps
following them between polls; off (the default) means nothing leaves the terminal.
"""

from __future__ import annotations

import base64
import io
import random
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel

from facefleet.terminal.runtime import TerminalModel

COLLECTION_FILE = "collection.json"


class CollectionSettings(BaseModel):
    """The ``collection`` part of an assignment."""

    enabled: bool = False
    sample_rate: float = 0.0
    attempts: Literal["rejections", "near_threshold", "all"] = "rejections"
    near_threshold_band: float = 0.0


def load_settings(data_dir: Path) -> CollectionSettings:
    path = Path(data_dir) / COLLECTION_FILE
    if not path.exists():
        return CollectionSettings()
    try:
        return CollectionSettings.model_validate_json(path.read_bytes())
    except ValueError:  # a damaged file: collect nothing until the next assignment says otherwise
        return CollectionSettings()


def selected(settings: CollectionSettings, *, match: bool, score: float, threshold: float) -> bool:
    """Whether an attempt is of the kind the settings collect (before sampling)."""
    if not settings.enabled:
        return False
    if settings.attempts == "rejections":
        return not match
    if settings.attempts == "near_threshold":
        return abs(score - threshold) <= settings.near_threshold_band
    return True


def should_upload(
    settings: CollectionSettings, *, match: bool, score: float, threshold: float, rng: random.Random
) -> bool:
    if not selected(settings, match=match, score=score, threshold=threshold):
        return False
    return settings.sample_rate >= 1.0 or rng.random() < settings.sample_rate


def face_crop_png(model: TerminalModel, image_png: bytes) -> bytes | None:
    """The face as the model saw it: the aligner's crop, else the frame resized to the input size."""
    decoded = Image.open(io.BytesIO(image_png)).convert("RGB")
    if model.aligner is not None:
        crop = model.aligner.align(decoded).image
        if crop is None:
            return None
    else:
        size = model.input_size
        crop = decoded.resize((size, size), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    crop.convert("RGB").save(out, format="PNG")
    return out.getvalue()


def attempt_body(
    *,
    model_version_id: int,
    user: str,
    score: float,
    match: bool,
    threshold: float,
    probe_png: bytes,
    reference_png: bytes,
    captured_at: datetime | None = None,
) -> dict[str, Any]:
    """The JSON ``POST /v1/device/attempts`` takes."""
    return {
        "model_version_id": int(model_version_id),
        "user": user,
        "score": float(score),
        "decision": "accept" if match else "reject",
        "threshold": float(threshold),
        "captured_at": (captured_at or datetime.now(timezone.utc)).isoformat(),
        "probe_png_b64": base64.b64encode(probe_png).decode(),
        "reference_png_b64": base64.b64encode(reference_png).decode(),
    }


@dataclass
class CollectionCounters:
    """What collection did since the agent started (reported in heartbeats)."""

    uploaded: int = 0
    not_selected: int = 0
    refused: int = 0
    failed: int = 0
    last_error: str = ""
    refusals: dict[int, int] = field(default_factory=dict)  # HTTP status -> count

    def as_health(self) -> dict[str, Any]:
        return {
            "uploaded": self.uploaded,
            "not_selected": self.not_selected,
            "refused": self.refused,
            "failed": self.failed,
            "last_error": self.last_error[:200],
        }
