"""A ``kind: landmarks`` run: Ray Train over the landmarks datasets, NME on their held-out split, ONNX export,
registry. Same shape as the recognition run (prepare -> TorchTrainer -> evaluate/export/register)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, cast

import numpy as np
import ray.train
import torch
from pydantic import BaseModel
from safetensors.torch import save_file
from sqlalchemy.orm import Session

from facefleet.nn.landmarks import LandmarkInference, LandmarkNet, grid_targets, landmark_loss
from facefleet.nn.probe import make_probe_input
from facefleet.platform.db.session import session_scope
from facefleet.platform.errors import InvalidInputError
from facefleet.platform.models.card import ArchitectureSpec, DatasetEntry, InputSpec, ModelCard, ProbeSpec
from facefleet.platform.models.service import artifact_info, register_model_version
from facefleet.platform.runs import service
from facefleet.platform.runs.schemas import TrainingConfig
from facefleet.platform.store import ObjectStore, get_store, store_from_url
from facefleet.workers import train_driver
from facefleet.workers.landmarks_data import eval_inputs, load_faces, nme, sample_batch
from facefleet.workers.train_driver import FitOutcome
from facefleet.workers.train_loop import apply_gradients, end_of_step, wrap_distributed
from facefleet.workers.train_state import TrainState, restore_state

logger = logging.getLogger(__name__)
ONNX_TOLERANCE = 1e-3  # points in crop pixels
FAILURE_NME = 0.10
PROBE_SEED, PROBE_COUNT = 1234, 2


class LandmarkJob(BaseModel):
    run_id: int
    config: TrainingConfig
    datasets: list[tuple[str, int, str]]  # (name, version, manifest key)
    total_steps: int
    database_url: str
    store_url: str
    s3_endpoint_url: str | None = None
    # The reporter reads these; a landmarks run has no label space.
    entries: list[Any] = []


def build_net(config: TrainingConfig) -> LandmarkNet:
    return LandmarkNet(input_size=config.input_size, grid=config.landmarks.grid, width=config.landmarks.width)


def prepare_job(session: Session, run_id: int) -> LandmarkJob:
    plan, fields = train_driver.start_job(session, run_id)
    return LandmarkJob(
        **fields, datasets=[(entry.dataset, entry.version, entry.manifest_key) for entry in plan.train]
    )


def _store(job: LandmarkJob) -> ObjectStore:
    return store_from_url(job.store_url, endpoint_url=job.s3_endpoint_url)


def landmarks_train_func(loop_config: dict[str, Any]) -> None:
    """One worker: random augmented batches of the training split, loss of seed 001, Adam + cosine."""
    from facefleet.workers.train_reporting import RankZeroReporter

    job = LandmarkJob.model_validate(loop_config)
    cfg, lm = job.config, job.config.landmarks
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = torch.device("cpu")
    torch.manual_seed(cfg.seed + rank)
    faces = load_faces(_store(job), job.datasets, "train", cfg.input_size, lm.crop_scale)
    if not faces:
        raise InvalidInputError("the landmarks datasets hold no training faces (all are held out)")
    model = build_net(cfg)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(job.total_steps, 1))
    state = TrainState(model, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False))
    start_step = restore_state(ray.train.get_checkpoint(), state, device)
    ddp = wrap_distributed(model, device)  # type: ignore[arg-type]
    reporter = RankZeroReporter(cast(Any, job), world_size, start_step) if rank == 0 else None
    rng = np.random.default_rng([cfg.seed, rank, start_step])
    step = start_step
    model.train()
    while step < job.total_steps:
        images, points = sample_batch(faces, cfg.batch_size, cfg.input_size, lm, rng)
        logits, offsets = ddp(images)
        losses = landmark_loss(
            logits,
            offsets,
            grid_targets(points, cfg.input_size, lm.grid),
            negatives_per_landmark=lm.negatives_per_landmark,
            localisation_weight=lm.localisation_weight,
        )
        apply_gradients(losses["loss"], optimizer, scheduler, state.scaler)
        step += 1
        if reporter is not None:
            reporter.after_step(
                step, losses, images.shape[0] * world_size, 0.0, optimizer.param_groups[0]["lr"], 1
            )
        if not end_of_step(job, step, losses["loss"], reporter, state, rank=rank, device=device):
            return


def run_trainer(job: LandmarkJob) -> FitOutcome:
    """The recognition run's TorchTrainer over the landmarks loop (which runs on the CPU)."""
    return train_driver.run_trainer(job, landmarks_train_func, allow_gpu=False)


def evaluate(net: LandmarkNet, job: LandmarkJob) -> dict[str, float]:
    """NME (eye-centre distance) and failure rate (NME > 0.10) on the held-out split, in source pixels."""
    cfg = job.config
    faces = load_faces(_store(job), job.datasets, "test", cfg.input_size, cfg.landmarks.crop_scale)
    if not faces:
        return {"test_faces": 0.0}
    batch, back = eval_inputs(faces, cfg.input_size, cfg.landmarks.crop_scale)
    net.eval()
    with torch.no_grad():
        crop_points = LandmarkInference(net)(torch.from_numpy(batch)).numpy().astype(np.float64)
    errors = [
        nme(points @ matrix[:, :2].T + matrix[:, 2], face.source_points)
        for points, matrix, face in zip(crop_points, back, faces, strict=True)
    ]
    return {
        "test_faces": float(len(errors)),
        "nme_eye_centres": float(np.mean(errors)),
        "failure_rate": float(np.mean([e > FAILURE_NME for e in errors])),
    }


def export(net: LandmarkNet, config: TrainingConfig, folder: Path) -> float:
    """model.safetensors + model.onnx (crops -> points), checked against torch; the largest difference."""
    import onnxruntime

    net = net.cpu().eval()
    save_file(
        {k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(folder / "model.safetensors")
    )
    wrapper = LandmarkInference(net).eval()
    size = config.input_size
    torch.onnx.export(
        wrapper,
        (torch.zeros(2, 3, size, size),),
        str(folder / "model.onnx"),
        input_names=["images"],
        output_names=["points"],
        dynamic_axes={"images": {0: "batch"}, "points": {0: "batch"}},
        opset_version=17,
        training=torch.onnx.TrainingMode.EVAL,
        dynamo=False,
    )
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    probe = make_probe_input(PROBE_SEED, 3, size)
    with torch.no_grad():
        expected = wrapper(probe).numpy()
    actual = session.run(["points"], {"images": probe.numpy()})[0]
    worst = float(np.abs(actual - expected).max())
    if worst > ONNX_TOLERANCE:
        raise RuntimeError(f"ONNX landmarks differ from torch by {worst:.2e} px (> {ONNX_TOLERANCE:g})")
    return worst


def finish_run(job: LandmarkJob, outcome: FitOutcome) -> dict[str, Any]:
    cfg = job.config
    net = build_net(cfg)
    train_driver.load_final_checkpoint(outcome, net)
    with session_scope() as session:
        train_driver.report_stage(session, job, "evaluating")
    metrics = evaluate(net, job)
    with session_scope() as session:
        service.record_metrics(session, job.run_id, job.total_steps, metrics)
    store = get_store()
    with tempfile.TemporaryDirectory(prefix="facefleet-export-") as tmp:
        folder = Path(tmp)
        parity = export(net, cfg, folder)
        probe = make_probe_input(PROBE_SEED, PROBE_COUNT, cfg.input_size)
        with torch.no_grad():
            probe_points = LandmarkInference(net)(probe).reshape(PROBE_COUNT, -1).tolist()
        card = ModelCard(
            name=cfg.model_name,
            version=0,
            kind="landmarks",
            architecture=ArchitectureSpec(
                backbone="landmarknet",
                kwargs={
                    "input_size": cfg.input_size,
                    "grid": cfg.landmarks.grid,
                    "width": cfg.landmarks.width,
                },
            ),
            input=InputSpec(size=cfg.input_size),
            embedding_dim=10,  # the output: five (x, y) points in crop pixels
            datasets=[
                DatasetEntry(name=name, version=version, class_offset=0, num_classes=1)
                for name, version, _ in job.datasets
            ],
            config=cfg.model_dump(mode="json", by_alias=True),
            metrics={**metrics, "onnx_max_abs_diff": parity},
            threshold=0.0,
            artifacts={name: artifact_info(folder / name) for name in ("model.safetensors", "model.onnx")},
            probe=ProbeSpec(
                seed=PROBE_SEED, count=PROBE_COUNT, embeddings=probe_points, tolerance=ONNX_TOLERANCE
            ),
        )
        with session_scope() as session:
            model = register_model_version(
                session, store, name=cfg.model_name, run_id=job.run_id, artifacts_dir=folder, card=card
            )
            registered = {"name": model.name, "version": model.version}
    return {
        "evaluation": metrics,
        "checkpoint_path": outcome.storage_path,
        "model": registered,
        "onnx_max_abs_diff": parity,
    }
