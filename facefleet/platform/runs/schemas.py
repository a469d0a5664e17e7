"""The typed training configuration stored on every run and in every model card, plus run views."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from facefleet.platform.names import Label, Name

HeadKind = Literal["softmax", "sphereface", "arcface", "cosface", "combined"]


# Bounds on every number (issue 11): a value no run could use is a 422 naming the field, never an
# overflow in the database or a NaN in training. Floats must be finite (no inf / nan anywhere).
MAX_STEPS = 10**9
MAX_WORKERS = 10_000
MAX_SCALE = 1024.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class HeadConfig(_Strict):
    """Dataset-aware margin softmax (design §5.2); defaults: ArcFace s=16, m=0.2, crossing p=1e-4.

    Chosen on bench/real_faces.py's validation pairs (README, stop 29): at s=32, m=0.3 the small models of
    this machine escaped the scale through the embedding BatchNorm's shift (every cosine near 0.99, class
    centres of different people at 0.9996) and held-out AUC was 0.69; at s=16, m=0.2 it was 0.80. The
    seed's s=64, m=0.5 was worse still; set larger values explicitly for big backbones trained long."""

    kind: HeadKind = "arcface"
    s: float = Field(default=16.0, gt=0, le=MAX_SCALE, description="logit scale (seed: 64)")
    m1: float = Field(default=1.0, ge=1.0, le=16.0, description="SphereFace multiplicative angular margin")
    m2: float = Field(default=0.2, ge=0.0, lt=3.1416, description="ArcFace additive angular margin, seed 0.5")
    m3: float = Field(default=0.0, ge=0.0, le=2.0, description="CosFace additive cosine margin")
    crossing_p: float = Field(default=1e-4, ge=0.0, le=1.0, description="0 dataset-aware, 1 plain softmax")
    sharded: bool = Field(
        default=False,
        description="Partial FC: the class matrix split across the Ray Train workers (needs >= 2 workers)",
    )
    sample_rate: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="share of negative classes per step (positives always kept); < 1 needs sharded",
    )


class ReversalConfig(_Strict):
    """Dataset classifier with the two-stage gradient reversal schedule (design §5.3)."""

    enabled: bool = True
    lambda_: float = Field(default=0.1, ge=0.0, le=100.0, alias="lambda")
    switch_fraction: float = Field(default=1 / 3, ge=0.0, le=1.0, description="seed: 80k of 240k steps")
    switch_step: int | None = Field(
        default=None, ge=0, le=MAX_STEPS, description="overrides switch_fraction when set"
    )
    schedule: Literal["step", "ramp"] = Field(
        default="step",
        description="step: lambda from switch_step on; ramp: DANN's 2/(1+exp(-10p))-1 ramp up to lambda",
    )
    classifier_hidden: int = Field(
        default=0, ge=0, le=8192, description="hidden width of the dataset classifier; 0 = linear"
    )

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


class BiometricConfig(_Strict):
    """BioMetricNet metric head on within-dataset pairs (§5.4); seed: μ_m=0, μ_n=40, σ=1, m=1."""

    enabled: bool = False
    alpha: float = Field(default=1.0, ge=0.0, le=1e4)
    output_dim: int = Field(default=1, ge=1, le=4096)
    layers: int = Field(default=7, ge=1, le=64)
    keep_prob: float = Field(default=0.8, gt=0.0, le=1.0)
    mu_match: float = Field(default=0.0, ge=-1e6, le=1e6)
    mu_nonmatch: float = Field(default=40.0, ge=-1e6, le=1e6)
    sigma: float = Field(default=1.0, gt=0.0, le=1e6)
    hard_fraction: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="hard mining: keep pairs farther than sigma*sqrt(m) from target, at least this share",
    )
    images_per_identity: int = Field(default=4, ge=1, le=1024, description="K of the P x K balanced batch")
    feature_grad: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="share of the KL gradient that reaches the backbone; 0 = ModelNet on detached embeddings",
    )
    pair_features: Literal["concat", "symmetric"] = Field(
        default="concat",
        description="ModelNet input: concat [f1, f2] (seed) or symmetric [f1*f2, |f1-f2|] (holds the cosine)",
    )
    pair_source: Literal["batch", "memory"] = Field(
        default="batch",
        description="batch: pairs within identity-balanced P x K batches (seed); memory: ordinary batches "
        "paired with a memory of the last memory_size embeddings (images_per_identity unused)",
    )
    memory_size: int = Field(
        default=4096,
        ge=2,
        le=1_000_000,
        description="rows of the pair memory (pair_source: memory), per worker",
    )


class OptimizerConfig(_Strict):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(default=0.1, gt=0, le=100.0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=5e-4, ge=0, le=1.0)


class ScheduleConfig(_Strict):
    kind: Literal["cosine", "step", "constant"] = "cosine"
    warmup_steps: int = Field(default=0, ge=0, le=MAX_STEPS)
    step_milestones: list[Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=lambda: [0.5, 0.75], max_length=64, description="fractions of steps"
    )
    step_gamma: float = Field(default=0.1, gt=0, le=10.0)


class ScalingConfigModel(_Strict):
    """Ray Train scaling. ``num_workers=0`` is Ray Train's local mode (in-process: tests, debugging)."""

    num_workers: int = Field(default=2, ge=0, le=MAX_WORKERS)
    gpus_per_worker: float = Field(default=0.0, ge=0, le=64.0)
    cpus_per_worker: float = Field(default=1.0, gt=0, le=1024.0)


class AugmentConfig(_Strict):
    """Per-image jitter of training batches beyond the horizontal flip (``facefleet.nn.augment``); all
    zero (the default) trains on the crops as they are. Each value is the maximum of a uniform draw."""

    shift: float = Field(default=0.0, ge=0.0, le=0.5, description="max shift per axis, in crop sides")
    scale: float = Field(default=0.0, ge=0.0, le=0.5, description="max relative zoom")
    rotation_degrees: float = Field(default=0.0, ge=0.0, le=45.0)
    brightness: float = Field(default=0.0, ge=0.0, le=1.0, description="max offset, in half the pixel range")
    contrast: float = Field(default=0.0, ge=0.0, le=1.0, description="max relative contrast change")
    saturation: float = Field(default=0.0, ge=0.0, le=1.0, description="max relative saturation change")
    greyscale_p: float = Field(default=0.0, ge=0.0, le=1.0, description="probability of a grey image")


class LandmarkConfig(_Strict):
    """A ``kind: landmarks`` run (seed 001): the grid model, its loss and the training augmentation."""

    grid: int = Field(
        default=8, ge=2, le=64, description="sub-regions per side; input_size / grid in 4, 8, 16"
    )
    width: int = Field(default=32, ge=4, le=256, description="channels of the first layer")
    crop_scale: float = Field(default=1.15, gt=0.5, le=3.0, description="crop side / detector box side")
    negatives_per_landmark: int = Field(default=3, ge=0, description="hard background sub-regions per class")
    localisation_weight: float = Field(default=1.0, ge=0.0)
    rotation_degrees: float = Field(default=15.0, ge=0.0, le=90.0)
    shift: float = Field(default=0.05, ge=0.0, le=0.5, description="max centre shift, in crop sides")
    zoom: float = Field(default=0.1, ge=0.0, le=0.5, description="max relative scale change")
    flip: bool = True


class TeacherRef(_Strict):
    """The teacher a ``distill`` run was created with, pinned by the platform (not set by the user)."""

    name: str
    version: int
    card_sha256: str = Field(max_length=64)
    backbone: str
    kwargs: dict[str, Any] = Field(default_factory=dict, description="get_backbone arguments of the card")
    input_size: int = Field(ge=16, le=512)
    embedding_dim: int = Field(ge=2, le=8192)
    threshold: float = Field(ge=-1.0, le=1.0, description="the teacher card's cosine threshold")


class DistillConfig(_Strict):
    """A ``kind: distill`` run (seed 002): a student backbone learns a registered teacher's embeddings
    (format 1) and, on inspection sets, the inspectors' verdicts at the student's counterpart of the
    teacher card's threshold (format 2). Format 2's defaults (weight 0.3, temperature 0.2, batch
    calibration, impostor share 0.8, cross pairs) were chosen on bench/distill.py's validation photos of
    returning users and its validation users."""

    teacher: str = Field(
        default="", max_length=200, description="a registered embedding model: name@version or name@alias"
    )
    inspection_sets: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list,
        max_length=64,
        description="inspection-set dataset versions (name, name:version or id); pinned when the run is made",
    )
    embedding_weight: float = Field(default=1.0, ge=0.0, le=1e4, description="cosine distance to the teacher")
    similarity_weight: float = Field(
        default=1.0, ge=0.0, le=1e4, description="MSE of the batch cosine-similarity matrices"
    )
    inspection_weight: float = Field(
        default=0.7, ge=0.0, le=1e4, description="format 2: decision loss on inspected attempt pairs"
    )
    temperature: float = Field(
        default=0.2, gt=0.0, le=10.0, description="decision logit = (score - threshold) / temperature"
    )
    calibration: Literal["batch", "teacher"] = Field(
        default="batch",
        description="format 2's threshold: teacher: the teacher card's; batch: its counterpart among the "
        "student's cross-image scores of each training batch (same rank as the teacher's threshold among "
        "the teacher's), differentiable, so impostor-like pairs are pushed below it",
    )
    inspection_batch: int = Field(
        default=32, ge=1, le=4096, description="inspected pairs per worker per step"
    )
    impostor_share: float = Field(
        default=0.9,
        ge=0.0,
        le=1.0,
        description="format 2: the share of the decision loss on impostor pairs (genuine pairs get the rest)",
    )
    cross_pairs: bool = Field(
        default=True,
        description="format 2 also on every reference of a batch of inspected pairs against every attempt "
        "an inspector confirmed: genuine for the same user, impostor for another user of the same terminal",
    )
    card_threshold: Literal["evaluated", "teacher"] = Field(
        default="evaluated",
        description="evaluated: at operating_far on the first verification set, like any run; teacher: the "
        "teacher card's threshold (the one format 2 trains the decisions at)",
    )
    resolved_teacher: TeacherRef | None = Field(
        default=None, description="set by the platform when the run is created"
    )


class TrainingConfig(_Strict):
    """Everything that decides what a run computes; stored as JSON on the run and in the model card."""

    kind: Literal["recognition", "landmarks", "distill"] = Field(
        default="recognition",
        description="recognition: an embedding model on train datasets; landmarks: the five-point model "
        "(seed 001) on landmarks datasets; distill: a student backbone from a registered teacher (seed 002)",
    )
    landmarks: LandmarkConfig = Field(default_factory=LandmarkConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    model_name: Name = "facefleet"
    backbone: str = "iresnet50"
    embedding_dim: int | None = Field(
        default=None, ge=2, le=8192, description="None = the backbone's default"
    )
    input_size: int = Field(default=112, ge=16, le=512)
    head: HeadConfig = Field(default_factory=HeadConfig)
    reversal: ReversalConfig = Field(default_factory=ReversalConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    biometric: BiometricConfig = Field(default_factory=BiometricConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    batch_size: int = Field(default=128, ge=2, le=65_536, description="images per worker per step")
    steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    epochs: float | None = Field(default=None, gt=0, le=1e5, description="used when steps is unset")
    eval_interval: int = Field(
        default=0, ge=0, le=MAX_STEPS, description="steps between evaluations; 0 = only at the end"
    )
    checkpoint_interval: int = Field(default=500, ge=1, le=MAX_STEPS)
    metrics_interval: int = Field(
        default=10, ge=1, le=MAX_STEPS, description="steps between metric writes by rank 0"
    )
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    scaling: ScalingConfigModel = Field(default_factory=ScalingConfigModel)
    mixed_precision: bool = Field(default=True, description="AMP on GPU workers; ignored on CPU")
    data_workers: int = Field(default=2, ge=0, le=64, description="DataLoader processes per training worker")
    cache_bytes: int = Field(default=256 << 20, ge=0, le=1 << 40, description="per-worker shard cache size")
    max_failures: int = Field(
        default=2, ge=0, le=100, description="worker-group restarts from the last checkpoint"
    )
    eval_pairs_per_dataset: int = Field(
        default=300, ge=0, le=1_000_000, description="pairs drawn per training dataset"
    )
    operating_far: float | None = Field(
        default=0.01,
        gt=0.0,
        lt=1.0,
        description="the model card's threshold accepts at most this share of impostor pairs of the first "
        "verification set; None: the best-accuracy threshold",
    )

    @model_validator(mode="after")
    def _self_consistent(self) -> TrainingConfig:
        if self.steps is None and self.epochs is None:
            self.steps = 10_000
        if self.kind == "distill" and not self.distill.teacher.strip():
            raise ValueError(
                "a distill run needs distill.teacher: a registered model, name@version or name@alias"
            )
        if self.kind != "distill" and (self.distill.teacher or self.distill.inspection_sets):
            raise ValueError("distill.teacher and distill.inspection_sets are for kind: distill runs only")
        if self.biometric.enabled and self.biometric.pair_source == "batch":
            k = self.biometric.images_per_identity
            if k < 2:
                raise ValueError(
                    "biometric.images_per_identity must be at least 2: a pair batch needs two images of one "
                    "identity to form a matching pair"
                )
            if self.batch_size < 2 * k or self.batch_size % k:
                raise ValueError(
                    f"batch_size {self.batch_size} cannot hold whole groups of {k} images of one identity "
                    f"and at least two identities: use a multiple of {k} that is at least {2 * k}"
                )
        if self.head.sharded and self.scaling.num_workers < 2:
            raise ValueError(
                f"head.sharded splits the classes across workers but scaling.num_workers is "
                f"{self.scaling.num_workers}: set scaling.num_workers >= 2 or head.sharded=false"
            )
        if self.head.sample_rate < 1.0 and not self.head.sharded:
            raise ValueError(
                "head.sample_rate < 1 samples negative classes of the sharded head: set head.sharded=true "
                "(with scaling.num_workers >= 2) or head.sample_rate=1"
            )
        if self.scaling.gpus_per_worker and self.scaling.num_workers == 0:
            raise ValueError("scaling.gpus_per_worker needs num_workers >= 1 (local mode runs on the CPU)")
        return self

    def switch_step(self, total_steps: int) -> int:
        """First step of reversal stage 2."""
        if self.reversal.switch_step is not None:
            return self.reversal.switch_step
        return int(round(self.reversal.switch_fraction * total_steps))


class RunDatasetView(BaseModel):
    position: int
    role: str
    dataset_version_id: int
    dataset: str = ""
    version: int = 0
    class_offset: int
    num_classes: int


class RunView(BaseModel):
    """A run as the API and CLI show it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    status: str
    trigger: str
    stage: str
    step: int
    total_steps: int
    progress: float
    eta_seconds: float | None
    launcher: str
    launcher_job_id: str | None
    cancel_requested: bool
    error: str | None
    summary: dict[str, Any]
    config: dict[str, Any]
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    datasets: list[RunDatasetView] = Field(default_factory=list)


class MetricPoint(BaseModel):
    step: int
    name: str
    value: float


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"head": {"s": 16}}`` -> ``{"head.s": 16}``: the dotted keys ``apply_overrides`` takes."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def apply_overrides(config: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """``["head.s=32", "reversal.enabled=false"]`` applied to a config dict (values read as YAML)."""
    import yaml

    result = {key: (dict(value) if isinstance(value, dict) else value) for key, value in config.items()}
    for assignment in assignments:
        path, sep, raw = assignment.partition("=")
        if not sep or not path.strip():
            raise ValueError(f"--set {assignment!r}: use key=value, e.g. head.s=32")
        keys = path.strip().split(".")
        target = result
        for key in keys[:-1]:
            nested = target.get(key)
            target[key] = dict(nested) if isinstance(nested, dict) else {}
            target = target[key]
        target[keys[-1]] = yaml.safe_load(raw)
    return result


class RunCreate(BaseModel):
    """Start a training run over dataset versions (``name``, ``name:version`` or a version id).

    The body of ``POST /v1/runs``; the CLI checks its arguments against it too. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    datasets: list[str | int] = Field(
        min_length=1, max_length=256, description="training datasets, in class-offset order"
    )
    verification_sets: list[str | int] = Field(default_factory=list, max_length=64)
    config: dict[str, Any] = Field(default_factory=dict, description="TrainingConfig fields (see the schema)")
    name: Label = Field("", description="display name; default: the datasets' names joined by '+'")
    start: bool = Field(True, description="hand the run to the launcher now (false: leave it queued)")


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    force: bool = Field(False, description="also stop the job through the launcher at once")
