"""An installed model at inference time: onnxruntime for embeddings, PyTorch weights for adaptation."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from facefleet.faces.aligner import MTCNNAligner
from facefleet.faces.landmarks import DEFAULT_CROP_SCALE, OnnxLandmarkLocator
from facefleet.faces.onnx_export import onnx_runners
from facefleet.nn.backbones import Backbone, get_backbone
from facefleet.nn.probe import make_probe_input
from facefleet.terminal.adapted_state import ADAPTED_FILE, load_adapted, save_adapted
from facefleet.terminal.bundle import ONNX_FILE, WEIGHTS_FILE, TerminalCard, VerificationError
from facefleet.terminal.onnx_fast import open_terminal_session

__all__ = ["ADAPTED_FILE", "TerminalModel", "build_backbone", "preprocess", "upper_prefixes"]


def preprocess(png_or_image: bytes | Image.Image, size: int) -> np.ndarray:
    """RGB image -> float32 [3, size, size] in [-1, 1] (the card's input normalisation)."""
    image = png_or_image if isinstance(png_or_image, Image.Image) else Image.open(io.BytesIO(png_or_image))
    image = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return ((array - 0.5) / 0.5).transpose(2, 0, 1).copy()


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


class TerminalModel:
    """One installed model version. ``embed`` returns unit vectors; scores are cosine similarities."""

    def __init__(self, model_dir: Path, card: TerminalCard, *, threads: int = 1) -> None:
        self.model_dir = model_dir
        self.card = card
        self.session = open_terminal_session((model_dir / ONNX_FILE).read_bytes(), threads)
        self.input_name = self.session.get_inputs()[0].name
        self._backbone: Backbone | None = None
        self.aligner = build_aligner(model_dir, card, threads)

    def face_input(self, image: bytes | Image.Image) -> np.ndarray | None:
        """The network input for one frame: aligned by the card's aligner (None: no face), else resized."""
        if self.aligner is None:
            return preprocess(image, self.input_size)
        decoded = image if isinstance(image, Image.Image) else Image.open(io.BytesIO(image))
        outcome = self.aligner.align(decoded)
        if outcome.image is None:
            return None
        return preprocess(outcome.image, self.input_size)

    @property
    def input_size(self) -> int:
        return self.card.input.size

    @property
    def adapted(self) -> bool:
        return (self.model_dir / ADAPTED_FILE).exists()

    def raw_onnx(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: images.astype(np.float32)})[0])

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Unit embeddings of [N, 3, S, S] images; once adapted, the on-device upper layers are used."""
        if self.adapted:
            with torch.no_grad():
                return self.embed_middle(self.middle(images))
        return l2_normalise(self.raw_onnx(images))

    # ---- PyTorch side (needs model.safetensors): middle features and the adaptable upper part

    def has_weights(self) -> bool:
        return (self.model_dir / WEIGHTS_FILE).exists()

    def backbone(self) -> Backbone:
        """Shipped weights, with the checked adapted upper part on top when there is one (a corrupt one
        raises ``CorruptAdaptedState``; ``Terminal`` checks at start-up and falls back)."""
        if self._backbone is None:
            backbone = build_backbone(self.card, self.model_dir / WEIGHTS_FILE)
            if self.adapted:
                state = load_adapted(self.model_dir / ADAPTED_FILE, self._upper_state(backbone))
                backbone.load_state_dict(state, strict=False)
            self._backbone = backbone
        return self._backbone

    @staticmethod
    def _upper_state(backbone: Backbone) -> dict[str, torch.Tensor]:
        prefixes = upper_prefixes(backbone)
        return {name: t for name, t in backbone.state_dict().items() if name.startswith(prefixes)}

    def shipped_upper_parameters(self) -> dict[str, torch.Tensor]:
        """The upper part's parameters exactly as the platform shipped them (adaptation drifts from these)."""
        shipped = build_backbone(self.card, self.model_dir / WEIGHTS_FILE)
        upper = {id(p) for p in shipped.upper_parameters()}
        return {name: p.detach().clone() for name, p in shipped.named_parameters() if id(p) in upper}

    def discard_adapted(self, keep_as: str | None = None) -> None:
        """Back to the shipped upper part (the adapted file is removed, or renamed to ``keep_as``)."""
        path = self.model_dir / ADAPTED_FILE
        if path.exists():
            if keep_as:
                path.replace(self.model_dir / keep_as)
            else:
                path.unlink()
        self._backbone = None

    def middle(self, images: np.ndarray) -> torch.Tensor:
        """The frozen lower part's output (what is stored per enrolled image for re-extraction)."""
        with torch.no_grad():
            return self.backbone().forward_lower(
                torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
            )

    def embed_middle(self, middle: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return l2_normalise(self.backbone().forward_upper(middle).numpy())

    def save_adapted_upper(self) -> None:
        """Persist the adapted upper layers next to the model (local only); atomically, with a checksum."""
        save_adapted(self.model_dir / ADAPTED_FILE, self._upper_state(self.backbone()))

    def self_test(self) -> float:
        """The card's probe input must give the card's embeddings (ONNX, and PyTorch when present)."""
        probe = self.card.probe
        images = make_probe_input(probe.seed, probe.count, self.input_size).numpy()
        expected = np.asarray(probe.embeddings, dtype=np.float32)
        outputs = {"onnx": self.raw_onnx(images)}
        if self.has_weights():
            with torch.no_grad():
                outputs["torch"] = self.backbone()(torch.from_numpy(images)).numpy()
        worst = 0.0
        for engine, output in outputs.items():
            if output.shape != expected.shape:
                raise VerificationError(
                    f"self-test: {engine} gives shape {output.shape}, card says {expected.shape}"
                )
            error = float(np.max(np.abs(output - expected)))
            if error > probe.tolerance:
                raise VerificationError(
                    f"self-test failed: {engine} probe embeddings differ from the card by "
                    f"{error:.3g} (tolerance {probe.tolerance})"
                )
            worst = max(worst, error)
        return worst


def build_aligner(model_dir: Path, card: TerminalCard, threads: int = 1) -> MTCNNAligner | None:
    """MTCNN (ONNX Runtime) with MTCNN's points or the bundled landmark model's, as the card says."""
    spec = card.aligner
    if spec is None:
        return None
    runners = onnx_runners(model_dir, spec.files, threads)
    locator = None
    if "landmarks" in spec.files:
        locator = OnnxLandmarkLocator(
            (model_dir / spec.files["landmarks"]).read_bytes(),
            spec.landmark_input_size or 64,
            spec.crop_scale or DEFAULT_CROP_SCALE,
        )
    return MTCNNAligner(runners, locator=locator, name=spec.name, version=spec.version)


def build_backbone(card: TerminalCard, weights_path: Path) -> Backbone:
    """Rebuild the architecture named by the card and load its safetensors weights (eval mode)."""
    kwargs = dict(card.architecture.kwargs)
    kwargs.setdefault("embedding_dim", card.embedding_dim)
    kwargs.setdefault("input_size", card.input.size)
    backbone = get_backbone(card.architecture.backbone, **kwargs)
    state = load_file(str(weights_path))
    prefix = "backbone."
    if state and all(key.startswith(prefix) for key in state):
        state = {key[len(prefix) :]: value for key, value in state.items()}
    backbone.load_state_dict(state)
    return backbone.eval()


def upper_prefixes(backbone: Backbone) -> tuple[str, ...]:
    """State-dict prefixes of the upper modules (their parameters and BatchNorm statistics)."""
    upper = {id(module) for module in backbone.upper_modules()}
    return tuple(name + "." for name, module in backbone.named_modules() if id(module) in upper)
