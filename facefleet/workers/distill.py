"""A ``kind: distill`` run (seed 002): a student backbone learns a frozen registered teacher on Ray Train.

Same shape as the recognition run and reusing its parts (job preparation, TorchTrainer, checkpoints, rank-0
reporting, evaluation, ONNX export, registry): each worker loads the teacher from the registry's safetensors
(SHA-256 checked, frozen, eval mode), embeds every training batch with both nets (images resized to each
net's input size) and trains the student on `facefleet.nn.distill`'s losses: format 1 against the teacher's
embeddings, plus format 2 on pairs drawn from the run's inspection sets (reference crop, attempt crop,
verdict) at the teacher card's threshold or, with ``distill.calibration: batch``, at its counterpart among
the student's scores of each batch. The registered card names the teacher and the inspection sets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pyarrow as pa
import ray.train
import torch
import torch.nn.functional as F
from pydantic import BaseModel
from safetensors.torch import load as load_safetensors
from sqlalchemy import select
from sqlalchemy.orm import Session
from torch import nn

from facefleet.nn.backbones import Backbone, get_backbone
from facefleet.nn.distill import cross_pair_verdicts, distillation_losses, inspection_scores, pair_scores
from facefleet.platform.datasets import layout
from facefleet.platform.db.models import Dataset, DatasetVersion, RunDataset
from facefleet.platform.errors import InvalidInputError
from facefleet.platform.models.card import DistillationSpec, InspectionSetEntry
from facefleet.platform.models.service import get_model_version
from facefleet.platform.runs.distill import WEIGHTS_FILE
from facefleet.platform.runs.schemas import TeacherRef, TrainingConfig
from facefleet.platform.store import ObjectStore, get_store, store_from_url
from facefleet.workers import train_driver
from facefleet.workers.train_driver import FitOutcome
from facefleet.workers.train_loop import (
    TrainJob,
    apply_gradients,
    end_of_step,
    epoch_loaders,
    pick_device,
    wrap_distributed,
)
from facefleet.workers.train_model import build_optimizer
from facefleet.workers.train_state import TrainState, restore_state

logger = logging.getLogger(__name__)


class TeacherSource(BaseModel):
    ref: TeacherRef
    weights_key: str
    weights_sha256: str


class InspectionSource(BaseModel):
    name: str
    version: int
    manifest_key: str
    pairs_key: str
    report: dict[str, Any] = {}


class DistillJob(TrainJob):
    """A TrainJob (label space, URLs, steps) plus where the teacher and the inspection sets are."""

    teacher: TeacherSource
    inspection: list[InspectionSource] = []


class StudentModel(nn.Module):
    """The student backbone, plus a training-only projection into the teacher's embedding space when the
    sizes differ (the cosine-distance term needs it; it is not exported)."""

    sharded_head = False  # what `wrap_distributed` asks of a training model
    model_net = None  # what the rank-0 evaluation asks of one

    def __init__(self, config: TrainingConfig, teacher_dim: int) -> None:
        super().__init__()
        self.backbone: Backbone = get_backbone(
            config.backbone, embedding_dim=config.embedding_dim, input_size=config.input_size
        )
        dim = int(self.backbone.embedding_dim)
        self.projection = nn.Linear(dim, teacher_dim, bias=False) if dim != teacher_dim else None

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        embeddings = self.backbone(images)
        return embeddings, (self.projection(embeddings) if self.projection is not None else None)


def prepare_job(session: Session, run_id: int) -> DistillJob:
    """The recognition job of the run (marks it starting), plus its pinned teacher and inspection sets."""
    base = train_driver.prepare_job(session, run_id)
    ref = base.config.distill.resolved_teacher
    if ref is None:
        raise InvalidInputError(f"run {run_id} has no resolved teacher; create it through the runs service")
    model = get_model_version(session, ref.name, ref.version)
    if model.card_sha256 != ref.card_sha256 or WEIGHTS_FILE not in model.artifacts:
        raise InvalidInputError(f"teacher {ref.name}@{ref.version} changed since run {run_id} was created")
    weights = model.artifacts[WEIGHTS_FILE]
    rows = session.execute(
        select(Dataset.name, DatasetVersion.version, DatasetVersion.manifest_key, DatasetVersion.report)
        .join(DatasetVersion, Dataset.id == DatasetVersion.dataset_id)
        .join(RunDataset, RunDataset.dataset_version_id == DatasetVersion.id)
        .where(RunDataset.run_id == run_id, RunDataset.role == "inspection")
        .order_by(RunDataset.position)
    ).all()
    return DistillJob(
        **base.model_dump(),
        teacher=TeacherSource(
            ref=ref, weights_key=str(weights["key"]), weights_sha256=str(weights["sha256"])
        ),
        inspection=[
            InspectionSource(
                name=name,
                version=version,
                manifest_key=manifest_key or "",
                pairs_key=layout.pairs_key(name, version),
                report=report or {},
            )
            for name, version, manifest_key, report in rows
        ],
    )


def _store(job: DistillJob) -> ObjectStore:
    return store_from_url(job.store_url, endpoint_url=job.s3_endpoint_url)


def load_teacher(job: DistillJob, device: torch.device) -> Backbone:
    """The registry's teacher weights (SHA-256 checked), frozen, in eval mode."""
    source = job.teacher
    data = _store(job).get_bytes(source.weights_key)
    if hashlib.sha256(data).hexdigest() != source.weights_sha256:
        raise RuntimeError(
            f"teacher {source.ref.name}@{source.ref.version}: weights do not match their SHA-256"
        )
    state = load_safetensors(data)
    prefix = "backbone."
    if state and all(key.startswith(prefix) for key in state):
        state = {key[len(prefix) :]: value for key, value in state.items()}
    ref = source.ref
    teacher = get_backbone(
        ref.backbone, embedding_dim=ref.embedding_dim, input_size=ref.input_size, **ref.kwargs
    )
    teacher.load_state_dict(state)
    teacher.requires_grad_(False)
    return teacher.to(device).eval()


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Square images to ``size`` (the teacher's and the student's input sizes may differ)."""
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


@dataclass
class InspectionPairs:
    """Inspected attempts as pairs: crops, verdicts, and who they are as far as the inspector said (the
    codes of ``facefleet.nn.distill.cross_pair_verdicts``)."""

    reference: torch.Tensor  # [P, 3, S, S] the enrolled user's crop
    attempt: torch.Tensor  # [P, 3, S, S]
    genuine: torch.Tensor  # [P] bool
    claimed: torch.Tensor  # [P] long: the claimed user, one code per (device, user)
    probe: torch.Tensor  # [P] long: the claimed user's code when the verdict is genuine, else -1
    device: torch.Tensor  # [P] long: the terminal

    def __len__(self) -> int:
        return int(self.genuine.shape[0])


def inspection_identities(
    manifest: pa.Table, pairs: Sequence[tuple[int, int, bool]], codes: dict[str, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(claimed, probe, device) codes of an inspection set's pairs, from its manifest's identities
    (``facefleet.platform.inspections.sets``: ``device:user`` for the reference and a genuine attempt,
    ``impostor:<id>`` for an impostor's). ``codes`` maps names to codes and grows, so that several sets
    share one numbering (one person on one terminal is one code in all of them)."""
    identities = manifest["identity"].to_pylist()
    claimed, probe, device = [], [], []
    for left, right, same in pairs:
        user = str(identities[left])
        claimed.append(codes.setdefault(user, len(codes)))
        probe.append(claimed[-1] if same and str(identities[right]) == user else -1)
        device.append(codes.setdefault("device " + user.split(":", 1)[0], len(codes)))
    return (
        torch.tensor(claimed, dtype=torch.long),
        torch.tensor(probe, dtype=torch.long),
        torch.tensor(device, dtype=torch.long),
    )


def read_inspection_set(
    store: ObjectStore, manifest_key: str, pairs_key: str, input_size: int, codes: dict[str, int]
) -> InspectionPairs:
    """One inspection set (its manifest and pairs read once): crops at ``input_size``, verdicts, codes."""
    from facefleet.platform.datasets.shards import read_manifest, read_pairs
    from facefleet.workers.data import load_verification_pairs

    manifest, pairs = read_manifest(store, manifest_key), read_pairs(store, pairs_key)
    reference, attempt, genuine = load_verification_pairs(store, manifest, pairs, input_size)
    return InspectionPairs(reference, attempt, genuine, *inspection_identities(manifest, pairs, codes))


def load_inspection_pairs(job: DistillJob, input_size: int) -> InspectionPairs:
    """Every inspected attempt of the run's inspection sets."""
    store = _store(job)
    codes: dict[str, int] = {}
    parts = []
    for source in job.inspection:
        parts.append(read_inspection_set(store, source.manifest_key, source.pairs_key, input_size, codes))
    if not parts:
        empty, none = torch.zeros(0, 3, input_size, input_size), torch.zeros(0, dtype=torch.long)
        return InspectionPairs(empty, empty, torch.zeros(0, dtype=torch.bool), none, none, none)
    return InspectionPairs(
        *(torch.cat([getattr(part, f.name) for part in parts]) for f in dataclasses.fields(InspectionPairs))
    )


def training_batches(
    job: DistillJob, rank: int, world_size: int, start_step: int, load_size: int, device: torch.device
) -> Iterator[torch.Tensor]:
    """Images of the training datasets forever (labels unused), decoded at ``load_size``."""
    for loader in epoch_loaders(job, rank, world_size, start_step, input_size=load_size):
        for images, _labels, _datasets in loader:
            yield images.to(device, non_blocking=True)


def _pair_batch(
    pairs: InspectionPairs, count: int, rng: np.random.Generator, *, cross_pairs: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` random inspected pairs, each crop flipped with probability 1/2: (crops: the references
    then the attempts, verdicts: [count] bool, or with ``cross_pairs`` the [count, count] int8 matrix of
    every reference against every attempt)."""
    pick = torch.from_numpy(rng.integers(0, len(pairs), count))
    crops = torch.cat([pairs.reference[pick], pairs.attempt[pick]])
    flip = torch.from_numpy(rng.random(2 * count) < 0.5)
    crops = torch.where(flip[:, None, None, None], torch.flip(crops, dims=[3]), crops)
    if not cross_pairs:
        return crops, pairs.genuine[pick]
    verdicts = cross_pair_verdicts(
        pairs.claimed[pick], pairs.probe[pick], pairs.device[pick], pairs.genuine[pick]
    )
    return crops, verdicts


def distill_train_func(loop_config: dict[str, Any]) -> None:
    """One worker: frozen teacher, DDP student, format 1 on training images + format 2 on inspected pairs."""
    from facefleet.workers.train_reporting import RankZeroReporter

    job = DistillJob.model_validate(loop_config)
    cfg, spec = job.config, job.config.distill
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = pick_device(cfg)
    torch.manual_seed(cfg.seed + rank)
    teacher = load_teacher(job, device)
    ref = job.teacher.ref
    student = StudentModel(cfg, ref.embedding_dim).to(device)
    optimizer, scheduler = build_optimizer(cfg, student, job.total_steps)
    state = TrainState(student, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False))
    start_step = restore_state(ray.train.get_checkpoint(), state, device)
    ddp = wrap_distributed(student, device)  # type: ignore[arg-type]
    reporter = RankZeroReporter(job, world_size, start_step) if rank == 0 else None
    pairs = load_inspection_pairs(job, cfg.input_size)
    use_pairs = len(pairs) > 0 and spec.inspection_weight > 0
    rng = np.random.default_rng([cfg.seed, rank, start_step, 2])
    batches = training_batches(job, rank, world_size, start_step, max(cfg.input_size, ref.input_size), device)
    step = start_step
    student.train()
    while step < job.total_steps:
        wait_started = time.perf_counter()
        images = next(batches)
        data_wait = time.perf_counter() - wait_started
        with torch.no_grad():
            target = teacher(resize(images, ref.input_size))
        batch, count = resize(images, cfg.input_size), images.shape[0]
        verdicts = None
        if use_pairs:
            crops, verdicts = _pair_batch(pairs, spec.inspection_batch, rng, cross_pairs=spec.cross_pairs)
            batch = torch.cat([batch, crops.to(device)])  # one forward: BatchNorm sees one batch
        embeddings, projected = ddp(batch)
        scores = same = None
        if verdicts is not None:
            k = spec.inspection_batch
            scores, same = inspection_scores(embeddings[count : count + k], embeddings[count + k :], verdicts)
        losses = distillation_losses(
            embeddings[:count],
            target,
            embedding_weight=spec.embedding_weight,
            similarity_weight=spec.similarity_weight,
            projected_student=None if projected is None else projected[:count],
            inspection_scores=scores,
            inspection_same=same,
            threshold=ref.threshold,
            temperature=spec.temperature,
            inspection_weight=spec.inspection_weight,
            calibration=spec.calibration,
            impostor_share=spec.impostor_share,
        )
        apply_gradients(losses["loss"], optimizer, scheduler, state.scaler)
        step += 1
        if reporter is not None:
            reporter.after_step(
                step, losses, count * world_size, data_wait, optimizer.param_groups[0]["lr"], 1
            )
        student_model = cast(Any, student)  # evaluated like a recognition model: it has a `backbone`
        if not end_of_step(
            job, step, losses["loss"], reporter, state, rank=rank, device=device, evaluate=student_model
        ):
            return


@torch.no_grad()
def inspection_metrics(backbone: Backbone, job: DistillJob, threshold: float) -> dict[str, dict[str, float]]:
    """Per inspection set: how the student's decisions at ``threshold`` agree with the verdicts."""
    from facefleet.workers.data import load_verification_set

    backbone.eval()
    store, size, out = _store(job), job.config.input_size, {}
    for source in job.inspection:
        left, right, same = load_verification_set(store, source.manifest_key, source.pairs_key, size)
        scores = torch.cat(
            [
                pair_scores(backbone(left[i : i + 256]), backbone(right[i : i + 256]))
                for i in range(0, len(same), 256)
            ]
        )
        accept = scores >= threshold
        out[f"{source.name}:{source.version}"] = {
            "pairs": float(len(same)),
            "agreement": float((accept == same).float().mean()),
            "false_rejects": float((~accept & same).sum()),
            "false_accepts": float((accept & ~same).sum()),
        }
    return out


def distillation_spec(job: DistillJob) -> DistillationSpec:
    ref = job.teacher.ref
    return DistillationSpec(
        teacher_name=ref.name,
        teacher_version=ref.version,
        teacher_card_sha256=ref.card_sha256,
        teacher_backbone=ref.backbone,
        teacher_threshold=ref.threshold,
        inspection_sets=[
            InspectionSetEntry(
                name=s.name,
                version=s.version,
                attempts=int(s.report.get("attempts", 0)),
                genuine=int(s.report.get("genuine", 0)),
                impostor=int(s.report.get("impostor", 0)),
            )
            for s in job.inspection
        ],
    )


def finish_run(job: DistillJob, outcome: FitOutcome) -> dict[str, Any]:
    """Evaluate the student like any run, check it on its inspection sets, export and register it."""
    from facefleet.workers.evaluate import evaluate_model

    cfg = job.config
    student = StudentModel(cfg, job.teacher.ref.embedding_dim)
    train_driver.load_final_checkpoint(outcome, student)
    store = get_store()
    sets = train_driver.evaluation_sets(job)
    results = evaluate_model(student.backbone, None, sets, cfg)
    threshold = (
        job.teacher.ref.threshold
        if cfg.distill.card_threshold == "teacher"
        else results.cosine_threshold(cfg.operating_far)
    )
    inspected = inspection_metrics(student.backbone, job, threshold)
    summary: dict[str, Any] = {**results.summary(), "inspection": inspected}
    flat = results.flat_metrics()
    flat.update({f"inspection/{name}/{k}": v for name, m in inspected.items() for k, v in m.items()})
    plots = train_driver.record_evaluation(job, store, results, flat)
    spec = distillation_spec(job)
    registered, parity = train_driver.export_run(job, store, student.backbone, summary, threshold, spec)
    return {
        **train_driver.run_summary(summary, plots, outcome, registered, parity, threshold),
        "teacher": {"name": spec.teacher_name, "version": spec.teacher_version},
        "inspection_sets": [f"{s.name}:{s.version}" for s in spec.inspection_sets],
    }
