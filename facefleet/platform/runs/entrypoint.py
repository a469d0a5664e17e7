"""The worker entrypoint every launcher starts: `python -m facefleet.workers.train --run ID`."""

from __future__ import annotations

ENTRYPOINT_MODULE = "facefleet.workers.train"


def entrypoint_args(run_id: int, module: str = ENTRYPOINT_MODULE) -> list[str]:
    """The arguments after ``python`` that train run ``run_id`` (``module``: the worker entrypoint, or a
    wrapper of it that tests start)."""
    return ["-m", module, "--run", str(run_id)]


def entrypoint_command(run_id: int) -> str:
    """The entrypoint as one shell command line (Ray job submissions and RayJobs take a string)."""
    return "python " + " ".join(entrypoint_args(run_id))
