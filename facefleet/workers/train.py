"""Worker entrypoint `python -m facefleet.workers.train --run ID`: runs one training run and records its fate.

Status in the database: queued -> starting -> running (set by rank 0) -> succeeded | failed | cancelled,
every change through facefleet.platform.runs.lifecycle.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import traceback
from types import FrameType

from facefleet.platform.db.session import session_scope
from facefleet.platform.runs import lifecycle, service
from facefleet.platform.runs.failures import redact, settings_secrets
from facefleet.platform.runs.schemas import TrainingConfig
from facefleet.platform.settings import get_settings
from facefleet.workers import train_driver

logger = logging.getLogger("facefleet.workers.train")


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # SystemExit unwinds through `finally` blocks, so Ray is shut down and the run row is updated.
    raise SystemExit(128 + signum)


def _finish(run_id: int, status: str, *, error: str | None = None, summary: dict | None = None) -> None:
    """Record the end of a run once (lifecycle.finish: a failure after a cancel request is a cancel)."""
    with session_scope() as session:
        lifecycle.finish(session, run_id, status, error=error, summary=summary)


def _cancel_if_requested(run_id: int) -> bool:
    """Record the run as cancelled when a cancel was requested; True then."""
    with session_scope() as session:
        requested = service.is_cancel_requested(session, run_id)
    if requested:
        _finish(run_id, "cancelled")
    return requested


def _train_evaluate_export(run_id: int) -> str:
    if _cancel_if_requested(run_id):
        return "cancelled"
    with session_scope() as session:
        kind = TrainingConfig.model_validate(service.get_run(session, run_id).config).kind
    if kind == "landmarks":
        from facefleet.workers import landmarks_run

        with session_scope() as session:
            landmark_job = landmarks_run.prepare_job(session, run_id)
        landmark_outcome = landmarks_run.run_trainer(landmark_job)
        if _cancel_if_requested(run_id):
            return "cancelled"
        _finish(run_id, "succeeded", summary=landmarks_run.finish_run(landmark_job, landmark_outcome))
        return "succeeded"
    if kind == "distill":
        from facefleet.workers import distill

        with session_scope() as session:
            distill_job = distill.prepare_job(session, run_id)
        distill_outcome = train_driver.run_trainer(distill_job, distill.distill_train_func)
        if _cancel_if_requested(run_id):
            return "cancelled"
        _finish(run_id, "succeeded", summary=distill.finish_run(distill_job, distill_outcome))
        return "succeeded"
    with session_scope() as session:
        job = train_driver.prepare_job(session, run_id)
    outcome = train_driver.run_trainer(job)
    if _cancel_if_requested(run_id):
        return "cancelled"
    _finish(run_id, "succeeded", summary=train_driver.finish_run(job, outcome))
    return "succeeded"


def run_training(run_id: int) -> str:
    """Train, evaluate, export and register run ``run_id``; the final status."""
    try:
        train_driver.wait_for_run(run_id)
        return _train_evaluate_export(run_id)
    except BaseException as error:  # noqa: BLE001 - record every way a run can end, then re-raise
        text = "".join(traceback.format_exception_only(type(error), error)).strip()
        if isinstance(error, SystemExit):
            text = f"the worker process was stopped (exit {error.code})"
        logger.error("run %s failed:\n%s", run_id, traceback.format_exc())
        try:
            _finish(run_id, "failed", error=redact(text, settings_secrets(get_settings()))[-4000:])
        except Exception:  # noqa: BLE001 - e.g. the database is what failed: the log and exit code tell
            logger.exception("run %s: could not record its failure", run_id)
        raise
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m facefleet.workers.train", description=__doc__)
    parser.add_argument("--run", type=int, required=True, help="id of a queued run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _terminate)
    try:
        status = run_training(args.run)
    except SystemExit as stop:
        return int(stop.code or 1)
    except Exception:  # noqa: BLE001 - already recorded on the run row
        return 1
    logger.info("run %s %s", args.run, status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
