"""Helpers of the distill tests: inspection sets made by the real collection path, and registered teachers.

``register_inspection_set`` goes the way a fleet's attempts go: a device given a registered model version,
collection on for its group, each attempt stored by ``record_attempt`` (what ``POST /v1/device/attempts``
calls), labelled by ``label_attempt_audited`` (``POST /v1/inspections/{id}``) and packed by
``create_inspection_set`` (``POST /v1/inspection-sets``). The result is a dataset version of format
``inspection``: per labelled attempt two images (the enrolled reference crop, the attempt crop) and one pair
(reference, attempt, verdict == "genuine"); its report says ``{"kind": "inspection", "threshold",
"model_versions", "attempts", "genuine", "impostor", "devices", "attempt_ids"}``.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import timezone
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from facefleet.platform.db.base import utcnow
from facefleet.platform.db.models import Dataset, DatasetVersion, ModelVersion
from facefleet.platform.inspections import service as inspections
from facefleet.platform.inspections.schemas import AttemptUpload
from facefleet.platform.inspections.sets import create_inspection_set
from facefleet.platform.models.card import ArchitectureSpec, InputSpec, ModelCard, ProbeSpec
from facefleet.platform.models.service import artifact_info, register_model_version
from facefleet.platform.store import ObjectStore
from tests.platform.inspections.factories import collect, give, make_device

Attempt = tuple[bytes, bytes, str]  # (reference crop, attempt crop, verdict)


def register_inspection_set(
    session: Session,
    store: ObjectStore,
    name: str,
    attempts: Sequence[Attempt],
    *,
    threshold: float = 0.5,
    model_version_id: int | None = None,
    group: str | None = None,
    users: Sequence[str] | None = None,
) -> DatasetVersion:
    """Record ``attempts`` from one device of ``group`` (default ``<name>-terminals``) running
    ``model_version_id`` (default: the first registered model version), label them, export them.
    ``users``: the enrolled user each attempt claims (default: a user of its own per attempt)."""
    if model_version_id is None:
        model_version_id = session.scalar(select(ModelVersion.id).order_by(ModelVersion.id).limit(1))
        assert model_version_id is not None, "register a model version first (the attempts' model)"
    version = session.get(ModelVersion, model_version_id)
    assert version is not None
    group = group or f"{name}-terminals"
    device = make_device(session, name=f"{group}-door", group=group)
    give(session, device, version)
    collect(session, group=group, attempts="all", sample_rate=1.0)
    now = utcnow()
    for index, (reference, attempt, verdict) in enumerate(attempts):
        genuine_score = 0.8 if index % 3 else threshold - 0.05  # some genuine users were refused
        score = genuine_score if verdict == "genuine" else threshold - 0.3
        body = AttemptUpload(
            model_version_id=model_version_id,
            user=users[index] if users is not None else f"user-{index}",
            score=score,
            decision="accept" if score >= threshold else "reject",
            threshold=threshold,
            captured_at=now.astimezone(timezone.utc),
            probe_png_b64=base64.b64encode(attempt).decode(),
            reference_png_b64=base64.b64encode(reference).decode(),
        )
        row = inspections.record_attempt(
            session, store, device, body, max_bytes=1 << 20, rate_per_hour=100_000, now=now
        )
        inspections.label_attempt_audited(session, attempt_id=row.id, verdict=verdict, actor="test-inspector")  # type: ignore[arg-type]
    dataset_version = create_inspection_set(session, store, name=name, device_ids=[device.id])
    dataset = session.get(Dataset, dataset_version.dataset_id)
    assert dataset is not None and dataset.kind == "inspection"
    return dataset_version


def attempts_from_folder(folder: Path, count: int) -> list[Attempt]:
    """Genuine attempts (two photos of one identity) alternating with impostors (two identities)."""
    identities = sorted(p for p in folder.iterdir() if p.is_dir())
    photos = [sorted(p.glob("*.jpg")) for p in identities]
    attempts: list[Attempt] = []
    for index in range(count):
        person = photos[index % len(photos)]
        if index % 2 == 0:
            attempts.append((person[0].read_bytes(), person[1].read_bytes(), "genuine"))
        else:
            other = photos[(index + 1) % len(photos)]
            attempts.append((person[0].read_bytes(), other[-1].read_bytes(), "impostor"))
    return attempts


def register_landmarks_model(session: Session, store: ObjectStore, folder: Path, name: str) -> ModelVersion:
    """A registered model whose card says ``kind: landmarks`` (not a teacher)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "model.onnx").write_bytes(b"graph")
    card = ModelCard(
        name=name,
        version=0,
        kind="landmarks",
        architecture=ArchitectureSpec(backbone="landmarknet", kwargs={"input_size": 32}),
        input=InputSpec(size=32),
        embedding_dim=10,
        threshold=0.0,
        artifacts={n: artifact_info(folder / n) for n in ("model.safetensors", "model.onnx")},
        probe=ProbeSpec(seed=1, count=1, embeddings=[[0.0] * 10]),
    )
    return register_model_version(session, store, name=name, run_id=None, artifacts_dir=folder, card=card)
