"""Terminals align like registration: the bundle names its aligner and ships MTCNN (ONNX); the terminal
detects and aligns each frame before embedding, at enrollment and verification."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image
from sqlalchemy import Engine

from facefleet.platform.datasets import service as datasets
from facefleet.platform.datasets import shards
from facefleet.platform.db.models import Run
from facefleet.platform.db.session import session_scope
from facefleet.platform.models.card import ModelCard
from facefleet.platform.models.service import CARD_FILE, version_prefix
from facefleet.platform.runs.schemas import TrainingConfig
from facefleet.platform.store import ObjectStore
from facefleet.terminal.local import Identity, Terminal
from facefleet.workers.export import export_and_register
from tests.faces.subsets import celeba_subset
from tests.terminal.model_factory import tiny_backbone


def _bundle(store: ObjectStore, tmp_path: Path, dataset_version_id: int) -> tuple[ModelCard, Path, bytes]:
    with session_scope() as session:
        run = Run(name="aligned", status="succeeded")
        session.add(run)
        session.flush()
        net = tiny_backbone(0)
        config = TrainingConfig(model_name="aligned", backbone="tiny", embedding_dim=32, input_size=32)
        version, _ = export_and_register(
            session,
            store,
            run_id=run.id,
            backbone=net,
            config=config,
            datasets=[],
            metrics={},
            threshold=0.5,
            dataset_version_ids=[dataset_version_id],
        )
        artifacts = dict(version.artifacts)
        number = version.version
    card_bytes = store.get_bytes(f"{version_prefix('aligned', number)}/{CARD_FILE}")
    folder = tmp_path / "artifacts"
    folder.mkdir()
    for name, entry in artifacts.items():
        if name != CARD_FILE and not name.endswith(".sig"):
            (folder / name).write_bytes(store.get_bytes(str(entry["key"])))
    return ModelCard.model_validate_json(card_bytes), folder, card_bytes


def _terminal(tmp_path: Path, folder: Path, card_bytes: bytes) -> Terminal:
    key = Ed25519PrivateKey.generate()
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    terminal = Terminal(tmp_path / "terminal")
    terminal.save_identity(
        Identity(
            server_url="http://unused",
            device_id=1,
            name="t",
            group="g",
            credential="ffd_unused",
            public_key_pem=pem.decode(),
        )
    )
    terminal.install(1, folder, card_bytes, base64.b64encode(key.sign(card_bytes)).decode())
    return terminal


def test_terminal_aligns_frames_like_registration(
    sqlite_engine: Engine, local_store: ObjectStore, tmp_path: Path
) -> None:
    photos = celeba_subset(tmp_path / "celeb", identities=1, images=3)
    with session_scope() as session:
        version = datasets.register_dataset_version(
            session, local_store, name="celeb", source=photos, align=True
        )
        version_id, manifest_key = version.id, version.manifest_key or ""
    card, folder, card_bytes = _bundle(local_store, tmp_path, version_id)
    assert card.aligner is not None and (card.aligner.name, card.aligner.version) == (
        "mtcnn",
        "facenet-pytorch-2.6.0",
    )
    assert set(card.aligner.files.values()) <= set(card.artifacts)

    terminal = _terminal(tmp_path, folder, card_bytes)
    model = terminal.current_model()
    assert model is not None and model.aligner is not None
    frames = sorted((photos / next(p.name for p in photos.iterdir())).glob("*.jpg"))
    faces, sky = [p.read_bytes() for p in frames if p.name != "zz_sky.jpg"], (frames[-1]).read_bytes()

    # The terminal's aligned crop (MTCNN through ONNX Runtime) is the registration's crop (PyTorch MTCNN).
    row = shards.read_manifest(local_store, manifest_key).to_pylist()[0]
    registered = np.asarray(
        Image.open(io.BytesIO(shards.read_range(local_store, row["shard"], row["offset"], row["size"]))),
        dtype=np.float64,
    )
    source = next(p for p in frames if row["member"].endswith(p.name))
    outcome = model.aligner.align(Image.open(source))
    assert outcome.image is not None
    difference = np.abs(np.asarray(outcome.image, dtype=np.float64) - registered).mean()
    assert difference < 4.0  # JPEG q95 noise; a different crop differs by tens of levels

    with pytest.raises(ValueError, match=r"no face found in enrollment image\(s\) 2"):
        terminal.enroll_user("alice", [faces[0], sky])
    assert terminal.enroll_user("alice", faces[:2]) == 2
    result = terminal.verify_user("alice", faces[1])
    assert result.reason == "" and result.score > 0.99  # the same frame as an enrolled one
    no_face = terminal.verify_user("alice", sky)
    assert (no_face.match, no_face.reason) == (False, "no face found")
