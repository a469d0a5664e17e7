"""Helpers of the distill tests: inspection sets in the contract's format, and registered teachers.

An inspection set (built for real by the inspection engineer's code) is a dataset version of format
``inspection`` packed like a verification set: per labelled attempt two images (left = the enrolled reference
crop, right = the attempt crop) and one pair (left, right, verdict == "genuine"); its report says
``{"kind": "inspection", "threshold", "model_versions", "attempts", "genuine", "impostor", "devices"}``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.orm import Session

from facefleet.platform.datasets.shards import ImageRecord, pack_shards, write_manifest, write_pairs
from facefleet.platform.db.models import Dataset, DatasetVersion, ModelVersion
from facefleet.platform.models.card import ArchitectureSpec, InputSpec, ModelCard, ProbeSpec
from facefleet.platform.models.service import artifact_info, register_model_version
from facefleet.platform.store import ObjectStore

Attempt = tuple[bytes, bytes, str]  # (reference crop, attempt crop, verdict)


def register_inspection_set(
    session: Session,
    store: ObjectStore,
    name: str,
    attempts: Sequence[Attempt],
    *,
    threshold: float = 0.5,
    model_versions: Sequence[str] = ("terminal@1",),
    devices: Sequence[int] = (1,),
) -> DatasetVersion:
    dataset = Dataset(name=name, kind="inspection")
    session.add(dataset)
    session.flush()
    records, pairs = [], []
    for index, (reference, attempt, verdict) in enumerate(attempts):
        for side, data in (("reference", reference), ("attempt", attempt)):
            records.append(
                ImageRecord.from_bytes(
                    identity=f"attempt-{index}", label=0, member=f"{index:06d}-{side}.jpg", data=data
                )
            )
        pairs.append((2 * index, 2 * index + 1, verdict == "genuine"))
    rows = pack_shards(store, name, 1, records)
    manifest_key = write_manifest(store, name, 1, rows)
    write_pairs(store, name, 1, pairs)
    genuine = sum(verdict == "genuine" for _, _, verdict in attempts)
    impostor = sum(verdict == "impostor" for _, _, verdict in attempts)
    version = DatasetVersion(
        dataset_id=dataset.id,
        version=1,
        source_uri=f"inspection://{name}",
        format="inspection",
        status="ready",
        identity_count=0,
        image_count=len(records),
        pair_count=len(pairs),
        content_hash=hashlib.sha256(b"".join(r.sha256.encode() for r in records)).hexdigest(),
        manifest_key=manifest_key,
        report={
            "kind": "inspection",
            "threshold": threshold,
            "model_versions": list(model_versions),
            "attempts": len(attempts),
            "genuine": genuine,
            "impostor": impostor,
            "devices": list(devices),
        },
    )
    session.add(version)
    session.flush()
    return version


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
