"""The model card: what a terminal needs to rebuild, verify, self-test and use a model. Written as JSON."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ArtifactInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sha256: str
    size: int


class ArchitectureSpec(BaseModel):
    """Enough to rebuild the PyTorch module: ``get_backbone(backbone, **kwargs)``."""

    model_config = ConfigDict(extra="forbid")

    backbone: str
    kwargs: dict[str, Any] = Field(default_factory=dict)


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int = 112
    channels: int = 3
    layout: str = "NCHW"
    color: str = "RGB"
    normalisation: str = "x = (pixel / 255 - 0.5) / 0.5  (range [-1, 1])"


class DatasetEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    version: int
    class_offset: int
    num_classes: int


class ProbeSpec(BaseModel):
    """``facefleet.nn.probe.make_probe_input(seed, count, input_size)`` must map to ``embeddings``."""

    model_config = ConfigDict(extra="forbid")

    seed: int
    count: int
    embeddings: list[list[float]]
    tolerance: float = 1e-3


class AlignerSpec(BaseModel):
    """The aligner a terminal runs before embedding: MTCNN (its ONNX files ship in the bundle) and the points
    from MTCNN or from a landmark model (its ONNX file in the bundle too)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="'mtcnn' or the landmark model's name.")
    version: str
    size: int = 112
    files: dict[str, str] = Field(
        default_factory=dict, description="role (pnet, rnet, onet, landmarks) -> file name in the bundle."
    )
    landmark_input_size: int | None = Field(default=None, description="The landmark model's crop size.")
    crop_scale: float | None = Field(default=None, description="The landmark model's crop side / box side.")


class InspectionSetEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    version: int
    attempts: int = 0
    genuine: int = 0
    impostor: int = 0


class DistillationSpec(BaseModel):
    """A student's provenance (``kind: distill`` runs): the teacher it learned from and the inspection sets
    whose verdicts trained its decisions at ``teacher_threshold``."""

    model_config = ConfigDict(extra="forbid")

    teacher_name: str
    teacher_version: int
    teacher_card_sha256: str
    teacher_backbone: str
    teacher_threshold: float
    inspection_sets: list[InspectionSetEntry] = Field(default_factory=list)


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    version: int
    kind: str = Field(
        default="embedding", description="'embedding' (face recognition) or 'landmarks' (five points)."
    )
    run_id: int | None = None
    architecture: ArchitectureSpec
    input: InputSpec
    embedding_dim: int
    datasets: list[DatasetEntry] = Field(default_factory=list)
    config: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    threshold: float = Field(description="Cosine-similarity threshold: scores >= threshold are a match.")
    artifacts: dict[str, ArtifactInfo] = Field(default_factory=dict)  # "model.safetensors", "model.onnx"
    probe: ProbeSpec
    aligner: AlignerSpec | None = Field(
        default=None, description="How faces were aligned for this model; terminals align the same way."
    )
    distillation: DistillationSpec | None = Field(
        default=None, description="Distilled students only: the teacher and the inspection sets."
    )
    created_at: str = ""

    def to_bytes(self) -> bytes:
        """Canonical JSON bytes (what gets hashed and signed)."""
        return self.model_dump_json(indent=2).encode()
