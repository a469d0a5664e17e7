"""Pre-flight check of the `ray` launcher: can the cluster's Python run this facefleet?

A Ray job runs its entrypoint with the first `python` on the PATH of the head's `ray start` process, and its
training workers with each node's own Python; neither is this process's interpreter. Before a run is accepted,
a tiny probe job (stdlib only, so it runs even where facefleet is missing) is submitted with the same
runtime_env as real runs. It imports the worker entrypoint on the head and the training code on every alive
node, and reports each interpreter and facefleet version. A missing or different facefleet refuses the run
with a message saying what to install where. A report that passed is remembered for a few minutes (per
cluster address and runtime_env); one that failed is not, so a fixed cluster is accepted at once.
"""

from __future__ import annotations

import json
import os
import shlex
import threading
import time
from dataclasses import dataclass
from typing import Any

from facefleet.platform.errors import FacefleetError, InvalidInputError
from facefleet.platform.runs.failures import describe
from facefleet.platform.runs.ray_jobs import FINISHED_STATES, RayJobsClient

MARK = "FACEFLEET_PREFLIGHT "
TIMEOUT_S = 180.0
NODE_TIMEOUT_S = 120.0
CACHE_TTL_S = 600.0

# Runs as `python -c` on the cluster: the standard library only, until facefleet imports.
PROBE = """
import json, sys
def probe(module):
    out = {"executable": sys.executable, "python": sys.version.split()[0]}
    try:
        import facefleet
        out["version"] = getattr(facefleet, "__version__", None)
        out["path"] = facefleet.__file__
        __import__(module)
    except BaseException as error:
        out["error"] = type(error).__name__ + ": " + str(error)
    return out
report = {"head": probe("facefleet.workers.train"), "nodes": []}
if "error" not in report["head"]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Pin
    ray.init(logging_level="ERROR", log_to_driver=False)
    task = ray.remote(num_cpus=0, max_retries=0)(probe)
    alive = [node for node in ray.nodes() if node["Alive"]]
    pinned = [task.options(scheduling_strategy=Pin(n["NodeID"], soft=False)) for n in alive]
    refs = [one.remote("facefleet.workers.train_loop") for one in pinned]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=NODE_TIMEOUT)
    for node, ref in zip(alive, refs):
        name = node["NodeManagerAddress"] + " (node " + node["NodeID"][:8] + ")"
        if ref not in ready:
            answer = {"error": "did not answer within %d s" % NODE_TIMEOUT}
        else:
            try:
                answer = ray.get(ref)
            except Exception as error:
                answer = {"error": type(error).__name__ + ": " + str(error).splitlines()[0]}
        answer["node"] = name
        report["nodes"].append(answer)
print(MARK + json.dumps(report), flush=True)
"""


@dataclass(frozen=True)
class _Report:
    """A probe's report that passed (only those are kept: a fixed cluster is not refused from memory)."""

    at: float
    report: dict[str, Any]


_cache: dict[str, _Report] = {}
_lock = threading.Lock()


def clear_cache() -> None:
    with _lock:
        _cache.clear()


def probe_entrypoint() -> str:
    script = PROBE.replace("MARK", repr(MARK)).replace("NODE_TIMEOUT", repr(NODE_TIMEOUT_S))
    return "python -c " + shlex.quote(script)


def advice(expected: str) -> str:
    return (
        f"Install facefleet=={expected} (with its dependencies: torch, ray[train]) into the Python "
        "environment that runs `ray start` on every Ray node, head and workers (or activate that environment "
        "before `ray start`: a job's `python` is the first on the head's PATH), then restart the nodes; or "
        "ship it with every job through FACEFLEET_RAY_RUNTIME_ENV, e.g. "
        f'\'{{"pip": ["facefleet=={expected}"]}}\' (see README, "With PostgreSQL and MinIO")'
    )


def _where(answer: dict[str, Any]) -> str:
    return f"{answer.get('executable', '?')} (Python {answer.get('python', '?')})"


def problems(report: dict[str, Any], expected: str) -> list[str]:
    """What in the probe's report stops facefleet ``expected`` from running; empty when all is well."""
    found = []
    answers = [("the head, where the job's entrypoint runs", report.get("head") or {})]
    answers += [(f"node {answer.get('node', '?')}", answer) for answer in report.get("nodes") or []]
    for place, answer in answers:
        if answer.get("error"):
            found.append(f"on {place}, {_where(answer)} fails to import facefleet: {answer['error']}")
        elif answer.get("version") != expected:
            found.append(
                f"on {place}, {_where(answer)} has facefleet {answer.get('version')} "
                f"({answer.get('path')}), not {expected}"
            )
    return found


def _parse(log: str) -> dict[str, Any] | None:
    for line in reversed(log.splitlines()):
        if line.startswith(MARK):
            try:
                return dict(json.loads(line[len(MARK) :]))
            except ValueError:
                return None
    return None


def run_probe(
    client: RayJobsClient, runtime_env: dict[str, Any] | None, timeout: float = TIMEOUT_S
) -> tuple[dict[str, Any] | None, dict[str, Any], str]:
    """Submit the probe job and wait for it: (its report or None, the job's info, its log)."""
    payload: dict[str, Any] = {
        "entrypoint": probe_entrypoint(),
        "submission_id": f"facefleet-preflight-{os.urandom(4).hex()}",
        "metadata": {"facefleet": "preflight"},
    }
    if runtime_env:
        payload["runtime_env"] = runtime_env
    job_id = client.submit(payload)
    deadline = time.monotonic() + timeout
    while True:
        info = client.info(job_id) or {}
        if info.get("status") in FINISHED_STATES:
            break
        if time.monotonic() > deadline:
            client.stop(job_id)
            raise FacefleetError(
                f"the pre-flight job {job_id} on the Ray cluster at {client.address} did not finish within "
                f"{timeout:.0f} s (status {info.get('status')}); check the cluster (`ray job logs {job_id}`) "
                "and retry",
                status_code=503,
            )
        time.sleep(0.5)
    log = client.logs(job_id)
    return _parse(log), info, log


def check_cluster(
    client: RayJobsClient,
    runtime_env: dict[str, Any] | None,
    *,
    expected: str | None = None,
    secrets: list[str] | None = None,
    use_cache: bool = True,
) -> None:
    """Raise InvalidInputError (422) when the cluster cannot run facefleet ``expected`` (default: ours)."""
    if expected is None:
        from facefleet import __version__

        expected = __version__
    key = json.dumps([client.address, runtime_env], sort_keys=True, default=str)
    with _lock:
        kept = _cache.get(key)
    if use_cache and kept is not None and time.monotonic() - kept.at < CACHE_TTL_S:
        report = kept.report
    else:
        found_report, info, log = run_probe(client, runtime_env)
        if found_report is None:
            detail = describe(
                f"the pre-flight job on the Ray cluster at {client.address} ended {info.get('status')} "
                f"without a report: {info.get('message') or ''}".split("\n")[0],
                log or info.get("message", ""),
                secrets=secrets or [],
            )
            raise InvalidInputError(f"{detail}\n{advice(expected)}")
        report = found_report
    found = problems(report, expected)
    if found:
        raise InvalidInputError(
            f"the Ray cluster at {client.address} cannot run facefleet {expected}: "
            + "; ".join(found)
            + f". {advice(expected)}"
        )
    if kept is None or kept.report is not report:  # a fresh report that passed: remember it
        with _lock:
            _cache[key] = _Report(time.monotonic(), report)
