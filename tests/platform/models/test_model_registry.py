"""Model registry: artifacts checked and uploaded, the card signed, versions numbered, aliases moved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from facefleet.platform.errors import InvalidInputError, NotFoundError
from facefleet.platform.models import service as registry
from facefleet.platform.models.card import ArchitectureSpec, InputSpec, ModelCard, ProbeSpec
from facefleet.platform.signing import public_key_pem, verify_signature
from facefleet.platform.store import ObjectStore


def _card(folder: Path, payload: bytes = b"weights") -> ModelCard:
    (folder / "model.safetensors").write_bytes(payload)
    (folder / "model.onnx").write_bytes(b"graph")
    return ModelCard(
        name="ignored",
        version=0,
        architecture=ArchitectureSpec(backbone="tiny", kwargs={"embedding_dim": 16}),
        input=InputSpec(size=32),
        embedding_dim=16,
        threshold=0.3,
        metrics={"verif": {"accuracy": 0.9}},
        artifacts={
            name: registry.artifact_info(folder / name) for name in ("model.safetensors", "model.onnx")
        },
        probe=ProbeSpec(seed=1, count=1, embeddings=[[0.0] * 16]),
    )


def test_register_signs_uploads_and_numbers_versions(
    session: Session, store: ObjectStore, tmp_path: Path
) -> None:
    first = registry.register_model_version(
        session, store, name="faces", run_id=None, artifacts_dir=tmp_path, card=_card(tmp_path)
    )
    second = registry.register_model_version(
        session,
        store,
        name="faces",
        run_id=None,
        artifacts_dir=tmp_path,
        card=_card(tmp_path, b"other weights"),
    )
    assert (first.version, second.version) == (1, 2)
    card_bytes = store.get_bytes("models/faces/2/model_card.json")
    card = json.loads(card_bytes)
    assert (card["name"], card["version"]) == ("faces", 2)
    assert verify_signature(public_key_pem(), card_bytes, second.signature or "")
    assert store.get_bytes("models/faces/2/model_card.sig").decode() == second.signature
    assert store.get_bytes(second.artifacts["model.safetensors"]["key"]) == b"other weights"
    assert registry.get_model_version(session, "faces", "candidate").id == second.id  # candidate moved along
    assert registry.get_model_version(session, "faces", "latest").id == second.id
    assert [v.version for v in registry.list_versions(session, "faces")] == [2, 1]


def test_promote_moves_an_alias(session: Session, local_store: ObjectStore, tmp_path: Path) -> None:
    for _ in range(2):
        registry.register_model_version(
            session, local_store, name="faces", run_id=None, artifacts_dir=tmp_path, card=_card(tmp_path)
        )
    registry.set_alias(session, "faces", "production", 1)
    assert registry.get_model_version(session, "faces", "production").version == 1
    registry.set_alias(session, "faces", "production", "candidate")
    assert registry.get_model_version(session, "faces", "production").version == 2
    summary = registry.list_models(session)
    assert [(s.name, s.latest_version, s.versions, s.aliases) for s in summary] == [
        ("faces", 2, 2, {"candidate": 2, "production": 2})
    ]
    view = registry.version_view(session, registry.get_model_version(session, "faces", 2))
    assert view.aliases == ["candidate", "production"]
    with pytest.raises(InvalidInputError, match="alias"):
        registry.set_alias(session, "faces", "Bad Alias", 1)
    with pytest.raises(NotFoundError):
        registry.set_alias(session, "faces", "production", 9)
    with pytest.raises(NotFoundError):
        registry.list_versions(session, "nobody")


def test_an_artifact_that_does_not_match_its_card_is_refused(
    session: Session, local_store: ObjectStore, tmp_path: Path
) -> None:
    card = _card(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(InvalidInputError, match="model.onnx has SHA-256"):
        registry.register_model_version(
            session, local_store, name="faces", run_id=None, artifacts_dir=tmp_path, card=card
        )
    assert local_store.list("models/") == []
