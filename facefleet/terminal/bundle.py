"""Terminal model bundles: card, SHA-256 and Ed25519 checks against the key pinned at enrollment."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

ONNX_FILE = "model.onnx"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model_card.json"
SIGNATURE_FILE = "model_card.sig"


class VerificationError(Exception):
    """An artifact or card that must not be installed (tampered, unsigned, wrong key, bad self-test)."""


# The card models below mirror facefleet.platform.models.card on purpose: the terminal may import only
# facefleet.nn (+ HTTP), so it reads the card with its own lenient (extra="ignore") models.
class CardArtifact(BaseModel):
    model_config = ConfigDict(extra="ignore")

    sha256: str
    size: int


class CardArchitecture(BaseModel):
    model_config = ConfigDict(extra="ignore")

    backbone: str
    kwargs: dict[str, Any] = Field(default_factory=dict)


class CardInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    size: int = 112


class CardProbe(BaseModel):
    model_config = ConfigDict(extra="ignore")

    seed: int
    count: int
    embeddings: list[list[float]]
    tolerance: float = 1e-3


class CardAligner(BaseModel):
    """The aligner to run before embedding (MTCNN ONNX files, optionally a landmark model's)."""

    model_config = ConfigDict(extra="ignore")

    name: str
    version: str
    size: int = 112
    files: dict[str, str]
    landmark_input_size: int | None = None
    crop_scale: float | None = None


class TerminalCard(BaseModel):
    """The part of the platform's model card a terminal relies on (terminals do not import the platform)."""

    model_config = ConfigDict(extra="ignore")

    name: str
    version: int
    architecture: CardArchitecture
    input: CardInput
    embedding_dim: int
    threshold: float
    artifacts: dict[str, CardArtifact]
    probe: CardProbe
    aligner: CardAligner | None = None


# The same as facefleet.platform.models.service.sha256_file, kept here: the terminal may import only nn.
def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_card(card_bytes: bytes, signature_b64: str, public_key_pem: str) -> TerminalCard:
    """Parse the card only after its Ed25519 signature checks out under the pinned platform key."""
    try:
        key = serialization.load_pem_public_key(public_key_pem.encode())
        if not isinstance(key, Ed25519PublicKey):
            raise VerificationError("the pinned platform key is not an Ed25519 key")
        key.verify(base64.b64decode(signature_b64, validate=True), card_bytes)
    except (InvalidSignature, ValueError) as exc:
        raise VerificationError(
            "model card signature does not verify against the pinned platform key"
        ) from exc
    try:
        card = TerminalCard.model_validate_json(card_bytes)
    except ValidationError as exc:
        raise VerificationError(f"signed model card is not readable: {exc.error_count()} problems") from exc
    if ONNX_FILE not in card.artifacts:
        raise VerificationError(f"model card lists no {ONNX_FILE}")
    if card.aligner is not None:
        for role in ("pnet", "rnet", "onet"):
            if card.aligner.files.get(role) not in card.artifacts:
                raise VerificationError(
                    f"the card's aligner needs its {role} file among the signed artifacts"
                )
        landmarks = card.aligner.files.get("landmarks")
        if landmarks is not None and landmarks not in card.artifacts:
            raise VerificationError("the card's landmark model file is not among the signed artifacts")
    return card


def verify_artifact(card: TerminalCard, file_name: str, path: Path) -> None:
    """The downloaded file must be exactly what the signed card lists."""
    expected = card.artifacts.get(file_name)
    if expected is None:
        raise VerificationError(f"{file_name} is not listed in the signed model card")
    actual = sha256_file(path)
    if actual != expected.sha256 or path.stat().st_size != expected.size:
        raise VerificationError(
            f"{file_name}: SHA-256 {actual[:16]}… does not match the signed card "
            f"({expected.sha256[:16]}…); not installing"
        )


def load_installed_card(model_dir: Path, public_key_pem: str) -> TerminalCard:
    """Re-check an installed model's card (cheap) before using it."""
    return verify_card(
        (model_dir / CARD_FILE).read_bytes(), (model_dir / SIGNATURE_FILE).read_text(), public_key_pem
    )
