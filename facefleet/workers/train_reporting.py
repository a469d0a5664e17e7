"""Rank 0's link to the database during training: metrics rows, progress/ETA on the run row, cancel checks."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from facefleet.platform.db.session import make_engine
from facefleet.platform.runs import lifecycle, service

if TYPE_CHECKING:
    from facefleet.workers.train_job import TrainJob
    from facefleet.workers.train_model import FaceTrainingModel


class RankZeroReporter:
    """Averages per-step numbers between writes; every write is one short transaction."""

    def __init__(self, job: TrainJob, world_size: int, start_step: int) -> None:
        self.job = job
        self.world_size = world_size
        self.engine: Engine = make_engine(job.database_url)
        # device tensors: reading a loss as a float each step would wait for the GPU every step
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.images = 0
        self.data_wait = 0.0
        self.window_started = time.perf_counter()
        self.run_started = self.window_started
        self.start_step = start_step
        self.lr = 0.0
        self.stage = 1
        self._eval_sets: list | None = None
        with Session(self.engine) as session, session.begin():
            lifecycle.mark_running(session, job.run_id)  # not over a cancel recorded while starting
            if start_step:
                service.record_metrics(session, job.run_id, start_step, {"resumed_from_step": start_step})

    def after_step(
        self, step: int, losses: dict[str, torch.Tensor], images: int, data_wait: float, lr: float, stage: int
    ) -> None:
        for name, value in losses.items():
            value = value.detach().double()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.count += 1
        self.images += images
        self.data_wait += data_wait
        self.lr, self.stage = lr, stage

    def write(self, step: int) -> bool:
        """Write the window's metrics and the progress; True when a cancel was requested."""
        now = time.perf_counter()
        elapsed = max(now - self.window_started, 1e-9)
        metrics = {name: float(total) / max(self.count, 1) for name, total in self.sums.items()}
        metrics.update(
            {
                "lr": self.lr,
                "stage": float(self.stage),
                "images_per_second": self.images / elapsed,
                "data_wait_fraction": self.data_wait / elapsed,
            }
        )
        done = step - self.start_step
        eta = (now - self.run_started) / done * (self.job.total_steps - step) if done else None
        with Session(self.engine) as session, session.begin():
            service.record_metrics(session, self.job.run_id, step, metrics)
            lifecycle.report_progress(
                session,
                self.job.run_id,
                step=step,
                total_steps=self.job.total_steps,
                stage=f"training (stage {self.stage})",
                eta_seconds=eta,
            )
            cancel = service.is_cancel_requested(session, self.job.run_id)
        self.sums.clear()
        self.count, self.images, self.data_wait = 0, 0, 0.0
        self.window_started = time.perf_counter()
        return cancel

    def evaluate(self, step: int, model: FaceTrainingModel) -> None:
        """Verification metrics at an eval interval (rank 0; the others wait at the next barrier)."""
        from facefleet.workers.evaluate import evaluate_model, load_eval_sets

        if self._eval_sets is None:
            with Session(self.engine) as session:
                self._eval_sets = load_eval_sets(
                    session,
                    self.job.run_id,
                    self.job.config,
                    store_url=self.job.store_url,
                    s3_endpoint_url=self.job.s3_endpoint_url,
                )
        was_training = model.training
        results = evaluate_model(model.backbone, model.model_net, self._eval_sets, self.job.config)
        model.train(was_training)
        with Session(self.engine) as session, session.begin():
            service.record_metrics(session, self.job.run_id, step, results.flat_metrics())
