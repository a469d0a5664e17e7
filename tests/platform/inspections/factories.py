"""Small builders for inspection tests: a device given a model version, collection on, an attempt body."""

from __future__ import annotations

import base64
import io
from datetime import datetime, timezone
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy.orm import Session

from facefleet.platform.db.models import Deployment, Device, DeviceDeployment, ModelVersion
from facefleet.platform.inspections import service as inspections
from facefleet.platform.inspections.schemas import AttemptUpload, CollectionSettings


def crop_png(seed: int, size: int = 32) -> bytes:
    """A small PNG, different per seed; noise, so its size grows with ``size`` (PNG cannot shrink it)."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def make_device(session: Session, name: str = "door-1", group: str = "lobby") -> Device:
    device = Device(name=name, group=group, status="active", health={})
    session.add(device)
    session.flush()
    return device


def make_version(session: Session, name: str = "m", version: int = 1) -> ModelVersion:
    row = ModelVersion(name=name, version=version, artifacts={}, eval_summary={})
    session.add(row)
    session.flush()
    return row


def give(session: Session, device: Device, version: ModelVersion) -> None:
    """A deployment of ``version`` to the device's group with the device in it (what a rollout leaves)."""
    deployment = Deployment(model_version_id=version.id, group=device.group, status="completed")
    session.add(deployment)
    session.flush()
    session.add(DeviceDeployment(deployment_id=deployment.id, device_id=device.id, status="installed"))
    device.model_version_id = version.id
    session.flush()


def collect(session: Session, group: str = "lobby", **settings: Any) -> None:
    inspections.set_collection_audited(
        session, group=group, settings=CollectionSettings(**settings), actor="test"
    )


def attempt_body(version_id: int, seed: int = 0, **fields: Any) -> AttemptUpload:
    values: dict[str, Any] = {
        "model_version_id": version_id,
        "user": "alice",
        "score": 0.41,
        "decision": "reject",
        "threshold": 0.5,
        "captured_at": datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc),
        "probe_png_b64": b64(crop_png(seed)),
        "reference_png_b64": b64(crop_png(seed + 1000)),
    }
    values.update(fields)
    return AttemptUpload.model_validate(values)
