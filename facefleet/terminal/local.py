"""The terminal's local state: identity, installed models with a ``current`` pointer, users and templates."""

from __future__ import annotations

import io
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel

from facefleet.terminal.adaptation import AdaptationConfig, UpdateOutcome, UpperLayerAdapter
from facefleet.terminal.adapted_state import (
    ADAPTED_FILE,
    STATE_FILE,
    AdaptationStatus,
    CorruptAdaptedState,
    read_status,
    write_status,
)
from facefleet.terminal.bundle import (
    CARD_FILE,
    SIGNATURE_FILE,
    VerificationError,
    load_installed_card,
    verify_artifact,
    verify_card,
)
from facefleet.terminal.guard import (
    GuardConfig,
    GuardDecision,
    ImpostorProbe,
    ProbeReport,
    judge,
    probe_users,
    split_captures,
    split_enrolled,
)
from facefleet.terminal.runtime import TerminalModel
from facefleet.terminal.templates import Template, TemplateDB


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
    adapted_now: bool = False  # an adaptation update was committed after this verification
    update_refused: bool = False  # an update was computed and refused by the impostor-probe guard
    reason: str = ""  # why there is no score (e.g. the model's aligner found no face)
    sample_id: int | None = None  # the claimed user's enrolled sample that scored best


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

    def __init__(
        self,
        data_dir: Path,
        *,
        adaptation: AdaptationConfig | None = None,
        guard: GuardConfig | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.models_dir = self.data_dir / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.db = TemplateDB(self.data_dir / "templates.sqlite")
        self.adaptation_config = adaptation or AdaptationConfig()
        self.guard_config = guard or GuardConfig()
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
            self._check_adapted(self._model, current)
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
        if current != model_version_id:  # a deployment: its model starts from the shipped weights
            self._reset_model(model_version_id, "new deployment")
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
            user,
            scores[best] >= model.card.threshold,
            scores[best],
            model.card.threshold,
            version,
            sample_id=templates[best].sample_id,
        )
        if result.match and self._adapts(model):
            middle = model.middle(batch)
            if self.guard_config.enabled and self.guard_config.recent_captures > 0:
                self.db.add_capture(
                    str(version), user, middle[0].numpy(), keep=self.guard_config.recent_captures
                )
            outcome = self._adapt(model, middle, embedding, templates[best].embedding, user)
            result.adapted_now = bool(outcome and outcome.applied)
            result.update_refused = bool(outcome and not outcome.applied)
        return result

    # ---- adaptation (seed 000) behind the impostor-probe guard (issue 18)
    def _status_path(self, model_version_id: int) -> Path:
        return self.model_dir(model_version_id) / STATE_FILE

    def adaptation_status(self) -> AdaptationStatus | None:
        """The current model's adaptation counters (what heartbeats report)."""
        current = self.current_version_id()
        return None if current is None else read_status(self._status_path(current))

    def _save_status(self, model_version_id: int, status: AdaptationStatus) -> None:
        write_status(self._status_path(model_version_id), status)

    def _check_adapted(self, model: TerminalModel, version: int) -> None:
        """At start-up: a corrupt or half-written adapted part -> the shipped one, reported. When an adapted
        part is in use, templates are re-extracted with it (a crash between writing the weights and the
        templates cannot leave them mismatched)."""
        if not model.adapted or not model.has_weights():
            return
        try:
            model.backbone()
        except CorruptAdaptedState as exc:
            model.discard_adapted(keep_as=ADAPTED_FILE + ".corrupt")
            status = read_status(self._status_path(version))
            status.fallbacks += 1
            status.last_fallback = f"adapted state rejected at start-up, shipped model in use: {exc}"
            status.relative_drift = 0.0
            status.note(status.last_fallback)
            self._save_status(version, status)
        self._refresh_templates(model, str(version))

    def _reset_model(self, model_version_id: int, reason: str) -> None:
        """Drop a model's adapted upper part and counters; its templates follow the shipped weights."""
        model_dir = self.model_dir(model_version_id)
        status_path = model_dir / STATE_FILE
        if not (model_dir / ADAPTED_FILE).exists() and not status_path.exists():
            return
        previous = read_status(status_path)
        model = self.load_model(model_version_id)
        model.discard_adapted()
        status = AdaptationStatus(resets=previous.resets + 1, last_reset=reason)
        status.note(f"reset to the shipped model: {reason}")
        self._save_status(model_version_id, status)
        self._refresh_templates(model, str(model_version_id))

    def reset_adaptation(self, reason: str = "requested") -> AdaptationStatus:
        """Back to the shipped upper part of the current model (on request)."""
        current = self.current_version_id()
        if current is None:
            raise RuntimeError("no model installed yet")
        model = self.current_model()
        assert model is not None
        model.discard_adapted()
        previous = read_status(self._status_path(current))
        status = AdaptationStatus(resets=previous.resets + 1, last_reset=reason)
        status.note(f"reset to the shipped model: {reason}")
        self._save_status(current, status)
        self._adapter = None
        self._refresh_templates(model, str(current))
        return status

    def _refresh_templates(self, model: TerminalModel, key: str) -> None:
        """Re-extract every template of ``key`` under ``model`` (stored middles; images where none)."""
        templates = self.db.templates(key)
        stored = [(t.sample_id, t.middle) for t in templates if t.middle is not None]
        rows: list[tuple[int, np.ndarray, np.ndarray | None]] = []
        if stored:  # one forward of the upper layers over every stored middle feature
            embeddings = model.embed_middle(torch.from_numpy(np.stack([middle for _, middle in stored])))
            rows = [(sid, emb, middle) for (sid, middle), emb in zip(stored, embeddings, strict=True)]
        without_middle = {t.sample_id for t in templates if t.middle is None}
        rows += self._extract(model, [s for s in self.db.samples() if s.id in without_middle])
        self.db.replace_templates(key, rows)

    def _with_middles(self, model: TerminalModel, key: str) -> list[Template]:
        """Templates of ``key``, computing middle features for any enrolled before adaptation was on."""
        templates = self.db.templates(key)
        if any(t.middle is None for t in templates):
            self._refresh_templates(model, key)
            templates = self.db.templates(key)
        return [t for t in templates if t.middle is not None]

    def _adapt(
        self,
        model: TerminalModel,
        middle: torch.Tensor,
        embedding: np.ndarray,
        template: np.ndarray,
        user: str,
    ) -> UpdateOutcome | None:
        version = int(self.current_version_id())  # type: ignore[arg-type]
        key = str(version)
        templates = self._with_middles(model, key)
        if self._adapter is None:
            self._adapter = UpperLayerAdapter(
                model.backbone(), self.adaptation_config, shipped=model.shipped_upper_parameters()
            )
            self._adapter.pressure = read_status(self._status_path(version)).negative_pressure
        adapter = self._adapter
        threshold = model.card.threshold
        score = float(embedding @ template)
        others_scores = [float(embedding @ t.embedding) for t in templates if t.user != user]
        if not adapter.qualifies(score, threshold, max(others_scores) if others_scores else None):
            return None  # accepted, but not confidently genuine: it never trains the model
        guarded = self.guard_config.enabled
        by_user = self.guard_config.split_by_user
        _probe, update_rows = split_enrolled(
            [t.sample_id for t in templates], [t.user for t in templates], by_user=by_user
        )
        usable = update_rows if guarded else range(len(templates))  # the probe is held out of the update
        others = [m for i in usable if templates[i].user != user and (m := templates[i].middle) is not None]
        own = [m for i in usable if templates[i].user == user and (m := templates[i].middle) is not None]
        captures = self.db.captures(key) if guarded else []
        probe_captures, update_captures = split_captures(
            [c.id for c in captures],
            [c.user for c in captures],
            probe_users(t.user for t in templates) if by_user else None,
        )
        others += [captures[i].middle for i in update_captures if captures[i].user != user]
        negatives = torch.from_numpy(np.stack(others)) if others else None
        own_middles = torch.from_numpy(np.stack(own)) if own else None
        if not adapter.observe_success(
            middle,
            torch.from_numpy(template),
            negatives,
            own_middles=own_middles,
            threshold=threshold,
        ):
            return None
        backbone = model.backbone()
        middles = [t.middle for t in templates if t.middle is not None]  # all of them (_with_middles)
        probe = ImpostorProbe.build(
            torch.from_numpy(np.stack(middles)),
            [t.user for t in templates],
            [t.sample_id for t in templates],
            backbone.forward_lower,
            model.input_size,
            self.guard_config,
            captures=(
                torch.from_numpy(np.stack([captures[i].middle for i in probe_captures])),
                [captures[i].user for i in probe_captures],
            )
            if probe_captures
            else None,
        )
        current = replace(
            probe.evaluate(backbone.forward_upper, threshold), positives=adapter.positive_score()
        )
        shipped = self._shipped_report(adapter, probe, threshold)

        def guard() -> GuardDecision:
            candidate = replace(
                probe.evaluate(backbone.forward_upper, threshold), positives=adapter.positive_score()
            )
            return judge(current, candidate, threshold, self.guard_config, shipped)

        outcome = adapter.try_update(guard if guarded else None)
        after = probe.evaluate(backbone.forward_upper, threshold) if outcome.applied else current
        if guarded:  # negatives follow the probe
            adapter.follow_probe(after, shipped, self.guard_config.margin)
        status = read_status(self._status_path(version))
        status.probe_far, status.probe_max_impostor = after.far, after.max_impostor
        status.probe_far_shipped = shipped.far
        status.negative_pressure = adapter.pressure
        if outcome.applied:
            model.save_adapted_upper()
            self._refresh_templates(model, key)  # templates follow the adapted upper layers
            status.updates_applied += 1
            status.relative_drift = outcome.relative_drift
        else:
            status.updates_rejected += 1
            status.last_rejection = outcome.reason
            status.note(f"update refused: {outcome.reason}")
        self._save_status(version, status)
        return outcome

    @staticmethod
    def _shipped_report(adapter: UpperLayerAdapter, probe: ImpostorProbe, threshold: float) -> ProbeReport:
        """The probe under the shipped upper weights (the base the negatives' pressure is measured from)."""
        with adapter.shipped_weights():
            return probe.evaluate(adapter.backbone.forward_upper, threshold)


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
