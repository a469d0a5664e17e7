"""A test launcher entrypoint: the real worker, whose rank 0 crashes once after a committed checkpoint.

`python -m tests.workers.fail_once_worker --run ID` (started by ``LocalLauncher(module=MODULE)``) runs
``facefleet.workers.train`` with its training function wrapped: on the first attempt (no checkpoint to
resume from), rank 0 raises right after the checkpoint of step FACEFLEET_TEST_FAIL_ONCE_AFTER_STEP (or the
next one) is committed, so Ray Train restarts the workers and they resume from it. The wrapper is defined
in ``__main__`` here, so Ray pickles it by value and the workers need not import the tests.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

FAIL_ONCE_ENV = "FACEFLEET_TEST_FAIL_ONCE_AFTER_STEP"
MODULE = "tests.workers.fail_once_worker"


def failing_once(
    train_func: Callable[[dict[str, Any]], None], fail_after: int
) -> Callable[[dict[str, Any]], None]:
    def wrapped(loop_config: dict[str, Any]) -> None:
        import ray.train

        if ray.train.get_checkpoint() is None:  # the first attempt; a resumed one trains on
            report = ray.train.report
            total = int(loop_config["total_steps"])

            def report_then_fail(metrics: dict[str, Any], *args: Any, **kwargs: Any) -> None:
                report(metrics, *args, **kwargs)
                step = int(metrics.get("step", 0))
                if ray.train.get_context().get_world_rank() == 0 and fail_after <= step < total:
                    ray.train.get_all_reported_checkpoints(
                        consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED, timeout_s=60
                    )
                    raise RuntimeError(f"injected failure after the checkpoint at step {step} (test hook)")

            ray.train.report = report_then_fail
        train_func(loop_config)

    return wrapped


def main() -> int:
    from facefleet.workers import train, train_driver

    train_driver.train_func = failing_once(train_driver.train_func, int(os.environ[FAIL_ONCE_ENV]))
    return train.main()


if __name__ == "__main__":
    sys.exit(main())
