"""The driver side of a run: prepare the job from the database, run the TorchTrainer, evaluate, export."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from sqlalchemy.orm import Session

from facefleet.platform.db.models import Run
from facefleet.platform.db.session import session_scope
from facefleet.platform.errors import NotFoundError
from facefleet.platform.models.card import DatasetEntry
from facefleet.platform.runs import lifecycle, service
from facefleet.platform.runs.datasets import run_datasets
from facefleet.platform.runs.schemas import TrainingConfig
from facefleet.platform.settings import get_settings
from facefleet.platform.store import get_store
from facefleet.workers.train_job import TrainJob
from facefleet.workers.train_loop import RunJob, train_func

if TYPE_CHECKING:
    from facefleet.nn.backbones import Backbone
    from facefleet.platform.models.card import DistillationSpec
    from facefleet.platform.store import ObjectStore
    from facefleet.workers.evaluate import EvalResults, EvalSet

logger = logging.getLogger(__name__)


@dataclass
class FitOutcome:
    checkpoint: Any  # ray.train.Checkpoint | None
    storage_path: str


def wait_for_run(run_id: int, timeout: float = 30.0) -> None:
    """The launcher may start us before the creating transaction is visible: poll briefly."""
    deadline = time.monotonic() + timeout
    while True:
        with session_scope() as session:
            if session.get(Run, run_id) is not None:
                return
        if time.monotonic() > deadline:
            raise NotFoundError(f"run {run_id} does not exist")
        time.sleep(0.5)


def start_job(session: Session, run_id: int) -> tuple[lifecycle.TrainingPlan, dict[str, Any]]:
    """Read the run's training plan and mark the run starting; the plan and the fields every kind's job
    carries (run id, config, step count, where the database and the store are)."""
    plan = lifecycle.training_plan(session, run_id)
    settings = get_settings()
    lifecycle.mark_starting(session, run_id)
    return plan, {
        "run_id": run_id,
        "config": plan.config,
        "total_steps": plan.total_steps,
        "database_url": settings.effective_database_url,
        "store_url": settings.effective_store_url,
        "s3_endpoint_url": settings.s3_endpoint_url,
    }


def prepare_job(session: Session, run_id: int) -> TrainJob:
    """Mark the run starting and build everything the workers need (label space, URLs, step count)."""
    from facefleet.workers.label_space import plan_label_space

    plan, fields = start_job(session, run_id)
    cache_dir = str((get_settings().data_dir / "cache").resolve())
    return TrainJob(**fields, entries=plan_label_space(plan.train), cache_dir=cache_dir)


def init_ray(config: TrainingConfig) -> None:
    """Join RAY_ADDRESS when set (Ray Jobs), else start a small local Ray bound to this process."""
    import ray

    if ray.is_initialized() or config.scaling.num_workers == 0:
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return
    needed = math.ceil(config.scaling.num_workers * config.scaling.cpus_per_worker)
    ray.init(
        num_cpus=max(needed, os.cpu_count() or 1),
        num_gpus=torch.cuda.device_count(),
        include_dashboard=False,
        object_store_memory=256 << 20,
    )


def run_trainer(
    job: RunJob, train_loop: Callable[[dict[str, Any]], None] | None = None, *, allow_gpu: bool = True
) -> FitOutcome:
    """Run the TorchTrainer over ``train_loop`` (the recognition loop unless a run kind brings its own; one
    that runs on the CPU only passes ``allow_gpu=False``); the same storage path and name resume from the
    last checkpoint. The recognition loop is looked up when called, not bound as a default, so a wrapper
    installed on ``train_func`` (the tests' fail-once entrypoint) takes effect."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = job.config
    init_ray(cfg)
    root, filesystem = get_store().pyarrow_storage()
    storage_path = f"{root}/runs/{job.run_id}"
    use_gpu = allow_gpu and cfg.scaling.gpus_per_worker > 0
    resources = {
        "CPU": cfg.scaling.cpus_per_worker,
        **({"GPU": cfg.scaling.gpus_per_worker} if use_gpu else {}),
    }
    trainer = TorchTrainer(
        train_loop if train_loop is not None else train_func,
        train_loop_config=job.model_dump(),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.scaling.num_workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name="checkpoints",
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    return FitOutcome(checkpoint=result.checkpoint, storage_path=storage_path)


def dataset_entries(session: Session, run_id: int) -> list[DatasetEntry]:
    return [
        DatasetEntry(
            name=dataset.name,
            version=version.version,
            class_offset=row.class_offset,
            num_classes=row.num_classes,
        )
        for row, version, dataset in run_datasets(session, [run_id], role="train")
    ]


def load_final_checkpoint(outcome: FitOutcome, model: torch.nn.Module) -> None:
    """Load the last checkpoint's weights into ``model``; a run must end with one."""
    from facefleet.workers.train_state import load_checkpoint_payload

    if outcome.checkpoint is None:
        raise RuntimeError("training ended without a checkpoint")
    model.load_state_dict(load_checkpoint_payload(outcome.checkpoint)["model"])


def report_stage(session: Session, job: RunJob, stage: str) -> None:
    """Training is done: the run's progress at its last step, now in ``stage`` (evaluating, exporting)."""
    lifecycle.report_progress(
        session, job.run_id, step=job.total_steps, total_steps=job.total_steps, stage=stage
    )


def evaluation_sets(job: TrainJob) -> list[EvalSet]:
    """Report "evaluating" and load the run's evaluation sets."""
    from facefleet.workers.evaluate import load_eval_sets

    with session_scope() as session:
        report_stage(session, job, "evaluating")
        return load_eval_sets(
            session, job.run_id, job.config, store_url=job.store_url, s3_endpoint_url=job.s3_endpoint_url
        )


def record_evaluation(
    job: TrainJob, store: ObjectStore, results: EvalResults, flat_metrics: dict[str, float]
) -> list[str]:
    """Record the final metrics, save the plots, report "exporting"; the plots' keys."""
    from facefleet.workers.evaluate import save_plots

    with session_scope() as session:
        service.record_metrics(session, job.run_id, job.total_steps, flat_metrics)
        plots = save_plots(store, job.run_id, results, service.run_metrics(session, job.run_id))
        report_stage(session, job, "exporting")
    return plots


def export_run(
    job: TrainJob,
    store: ObjectStore,
    backbone: Backbone,
    metrics: dict[str, Any],
    threshold: float,
    distillation: DistillationSpec | None = None,
) -> tuple[dict[str, Any], float]:
    """Export the backbone and register it as the run's model: ({name, version}, ONNX max abs diff)."""
    from facefleet.workers.export import export_and_register

    with session_scope() as session:
        model_version, parity = export_and_register(
            session,
            store,
            run_id=job.run_id,
            backbone=backbone,
            config=job.config,
            datasets=dataset_entries(session, job.run_id),
            metrics=metrics,
            threshold=threshold,
            dataset_version_ids=[entry.dataset_version_id for entry in job.entries],
            distillation=distillation,
        )
        return {"name": model_version.name, "version": model_version.version}, parity


def run_summary(
    evaluation: dict[str, Any],
    plots: list[str],
    outcome: FitOutcome,
    registered: dict[str, Any],
    parity: float,
    threshold: float,
) -> dict[str, Any]:
    """The summary keys every exported run records (a run kind adds its own after these)."""
    return {
        "evaluation": evaluation,
        "plots": plots,
        "checkpoint_path": outcome.storage_path,
        "model": registered,
        "onnx_max_abs_diff": parity,
        "threshold": threshold,
    }


def finish_run(job: TrainJob, outcome: FitOutcome) -> dict[str, Any]:
    """Evaluate the final checkpoint, save plots, export and register the model; the run's summary."""
    from facefleet.workers.evaluate import evaluate_model, operating_point_metrics
    from facefleet.workers.overlaps import overlaps_at_run_end
    from facefleet.workers.train_model import build_training_model

    model = build_training_model(job.config, [e.num_classes for e in job.entries], job.total_steps)
    load_final_checkpoint(outcome, model)
    store = get_store()
    sets = evaluation_sets(job)
    results = evaluate_model(model.backbone, model.model_net, sets, job.config)
    overlaps = overlaps_at_run_end(
        job.run_id,
        store,
        job.entries,
        model.backbone,
        input_size=job.config.input_size,
        seed=job.config.seed,
        head_weight=getattr(model.head, "weight", None),
    )
    summary, threshold = results.summary(), results.cosine_threshold(job.config.operating_far)
    point = results.operating_point() if job.config.operating_far is not None else None
    plots = record_evaluation(
        job, store, results, {**results.flat_metrics(), **operating_point_metrics(point)}
    )
    metrics = {**summary, **({"operating_point": point.model_dump()} if point else {})}
    registered, parity = export_run(job, store, model.backbone, metrics, threshold)
    return {
        **run_summary(summary, plots, outcome, registered, parity, threshold),
        **({"operating_point": point.model_dump()} if point else {}),
        **({"overlaps": overlaps} if overlaps is not None else {}),
    }
