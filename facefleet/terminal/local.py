"""The terminal's local state: identity, installed models with a ``current`` pointer, users and templates."""

from __future__ import annotations

import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel

from facefleet.terminal.adaptation import AdaptationConfig, UpperLayerAdapter
from facefleet.terminal.bundle import (
    CARD_FILE,
    SIGNATURE_FILE,
    VerificationError,
    load_installed_card,
    verify_artifact,
    verify_card,
)
from facefleet.terminal.runtime import TerminalModel
from facefleet.terminal.templates import TemplateDB


class Identity(BaseModel):
    """What enrollment gave this terminal; the platform key is pinned here."""

    server_url: str
    device_id: int
    name: str
    group: str
    credential: str
    public_key_pem: str
    adaptation_enabled: bool = False


@dataclass
class VerifyResult:
    user: str
    match: bool
    score: float
    threshold: float
    model_version_id: int
    adapted_now: bool = False
    reason: str = ""  # why there is no score (e.g. the model's aligner found no face)


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class Terminal:
    """Everything a terminal keeps on disk under ``data_dir``."""

    def __init__(self, data_dir: Path, *, adaptation: AdaptationConfig | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.models_dir = self.data_dir / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.db = TemplateDB(self.data_dir / "templates.sqlite")
        self.adaptation_config = adaptation or AdaptationConfig()
        self._model: TerminalModel | None = None
        self._adapter: UpperLayerAdapter | None = None

    # ---- identity
    @property
    def identity_path(self) -> Path:
        return self.data_dir / "identity.json"

    def identity(self) -> Identity | None:
        if not self.identity_path.exists():
            return None
        return Identity.model_validate_json(self.identity_path.read_bytes())

    def save_identity(self, identity: Identity) -> None:
        write_atomically(self.identity_path, identity.model_dump_json(indent=2).encode(), mode=0o600)

    def require_identity(self) -> Identity:
        identity = self.identity()
        if identity is None:
            raise RuntimeError(f"terminal in {self.data_dir} is not enrolled; run with --enroll-token")
        return identity

    # ---- installed models
    def _pointer(self, name: str) -> int | None:
        path = self.data_dir / name
        return int(path.read_text().strip()) if path.exists() else None

    def current_version_id(self) -> int | None:
        return self._pointer("current")

    def previous_version_id(self) -> int | None:
        return self._pointer("previous")

    def model_dir(self, model_version_id: int) -> Path:
        return self.models_dir / str(int(model_version_id))

    def is_installed(self, model_version_id: int) -> bool:
        return (self.model_dir(model_version_id) / CARD_FILE).exists()

    def load_model(self, model_version_id: int) -> TerminalModel:
        model_dir = self.model_dir(model_version_id)
        return TerminalModel(
            model_dir, load_installed_card(model_dir, self.require_identity().public_key_pem)
        )

    def current_model(self) -> TerminalModel | None:
        current = self.current_version_id()
        if current is None:
            return None
        if self._model is None or self._model.model_dir != self.model_dir(current):
            self._model, self._adapter = self.load_model(current), None
        return self._model

    def install(
        self, model_version_id: int, files_dir: Path, card_bytes: bytes, signature: str
    ) -> TerminalModel:
        """Verify, self-test, re-extract templates, switch atomically; any failure keeps the old model."""
        card = verify_card(card_bytes, signature, self.require_identity().public_key_pem)
        staging = self.models_dir / f"{int(model_version_id)}.staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            for file_name in card.artifacts:
                verify_artifact(card, file_name, files_dir / file_name)
                shutil.copyfile(files_dir / file_name, staging / file_name)
                verify_artifact(card, file_name, staging / file_name)  # what we will run is what was signed
            (staging / CARD_FILE).write_bytes(card_bytes)
            (staging / SIGNATURE_FILE).write_text(signature)
            model = TerminalModel(staging, card)
            model.self_test()
            self.db.replace_templates(str(model_version_id), self._extract(model, self.db.samples()))
            final = self.model_dir(model_version_id)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            self.db.drop_model(str(model_version_id))
            raise
        self.switch_to(model_version_id)
        return self.current_model()  # type: ignore[return-value]

    def switch_to(self, model_version_id: int) -> None:
        """Make an installed model current (re-extracting its templates first if users changed since)."""
        if not self.is_installed(model_version_id):
            raise VerificationError(f"model version {model_version_id} is not installed here")
        key = str(model_version_id)
        known = {t.sample_id for t in self.db.templates(key)}
        missing = [s for s in self.db.samples() if s.id not in known]
        if missing:
            self.db.add_templates(key, self._extract(self.load_model(model_version_id), missing))
        current = self.current_version_id()
        if current is not None and current != model_version_id:
            write_atomically(self.data_dir / "previous", str(current).encode())
        write_atomically(self.data_dir / "current", str(model_version_id).encode())
        self._model, self._adapter = None, None
        self._prune()

    def _prune(self) -> None:
        """Keep the current model and the previous one (for rollback); drop the rest and their templates."""
        keep = {str(v) for v in (self.current_version_id(), self.previous_version_id()) if v is not None}
        for path in self.models_dir.iterdir():
            if path.is_dir() and path.name.isdigit() and path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)
                self.db.drop_model(path.name)

    def _extract(
        self, model: TerminalModel, samples: list
    ) -> list[tuple[int, np.ndarray, np.ndarray | None]]:
        """Templates (and middle features, when this device adapts) of enrolled images under ``model``."""
        # A model with an aligner detects and aligns each stored frame; frames without a face get no template.
        inputs = [(s, model.face_input(s.image)) for s in samples]
        kept = [(s, x) for s, x in inputs if x is not None]
        if not kept:
            return []
        batch = np.stack([x for _, x in kept])
        embeddings = model.embed(batch)
        middles = model.middle(batch).numpy() if self._adapts(model) else None
        return [
            (s.id, embeddings[i], None if middles is None else middles[i]) for i, (s, _) in enumerate(kept)
        ]

    def _adapts(self, model: TerminalModel) -> bool:
        identity = self.identity()
        return bool(identity and identity.adaptation_enabled and model.has_weights())

    # ---- users
    def enroll_user(self, user: str, images: list[bytes | Image.Image]) -> int:
        model = self.current_model()
        if model is None:
            raise RuntimeError("no model installed yet; wait for a deployment before enrolling users")
        pngs = [to_png(image) for image in images]
        if model.aligner is not None:
            faceless = [index for index, png in enumerate(pngs) if model.face_input(png) is None]
            if faceless:
                raise ValueError(
                    f"no face found in enrollment image(s) {', '.join(str(i + 1) for i in faceless)}; "
                    "take them again facing the camera"
                )
        ids = set(self.db.add_samples(user, pngs))
        samples = [s for s in self.db.samples() if s.id in ids]
        self.db.add_templates(str(self.current_version_id()), self._extract(model, samples))
        return len(ids)

    def verify_user(self, user: str, image: bytes | Image.Image) -> VerifyResult:
        model = self.current_model()
        version = self.current_version_id()
        if model is None or version is None:
            raise RuntimeError("no model installed yet")
        templates = self.db.templates(str(version), user)
        if not templates:
            raise KeyError(f"user {user!r} is not enrolled on this terminal")
        face = model.face_input(to_png(image))
        if face is None:
            return VerifyResult(user, False, -1.0, model.card.threshold, version, reason="no face found")
        batch = face[None]
        embedding = model.embed(batch)[0]
        scores = [float(embedding @ t.embedding) for t in templates]
        best = int(np.argmax(scores))
        result = VerifyResult(
            user, scores[best] >= model.card.threshold, scores[best], model.card.threshold, version
        )
        if result.match and self._adapts(model):
            result.adapted_now = self._adapt(model, batch, templates[best].embedding, user)
        return result

    def _adapt(self, model: TerminalModel, batch: np.ndarray, template: np.ndarray, user: str) -> bool:
        if self._adapter is None:
            self._adapter = UpperLayerAdapter(model.backbone(), self.adaptation_config)
        key = str(self.current_version_id())
        others = [t.middle for t in self.db.templates(key) if t.user != user and t.middle is not None]
        impostors = torch.from_numpy(np.stack(others)) if others else None
        if not self._adapter.observe_success(model.middle(batch), torch.from_numpy(template), impostors):
            return False
        model.save_adapted_upper()
        templates = self.db.templates(key)
        stored = [(t.sample_id, t.middle) for t in templates if t.middle is not None]
        rows: list[tuple[int, np.ndarray, np.ndarray | None]] = []
        if stored:  # one forward of the upper layers over every stored middle feature
            embeddings = model.embed_middle(torch.from_numpy(np.stack([middle for _, middle in stored])))
            rows = [(sid, emb, middle) for (sid, middle), emb in zip(stored, embeddings, strict=True)]
        without_middle = {t.sample_id for t in templates if t.middle is None}
        rows += self._extract(model, [s for s in self.db.samples() if s.id in without_middle])
        self.db.replace_templates(key, rows)  # templates follow the adapted upper layers
        return True


def to_png(image: bytes | Image.Image) -> bytes:
    """Decode (rejecting non-images) and re-encode as PNG, so the DB never stores untrusted bytes."""
    try:
        decoded = image if isinstance(image, Image.Image) else Image.open(io.BytesIO(image))
        decoded = decoded.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"not a readable image: {exc}") from exc
    out = io.BytesIO()
    decoded.save(out, format="PNG")
    return out.getvalue()
