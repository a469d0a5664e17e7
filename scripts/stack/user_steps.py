"""What a user does against the running compose stack; one step per call, run in a client container.

    python user_steps.py register|run|model

The client container is the facefleet image on the compose network (FACEFLEET_SERVER_URL=http://api:8000,
FACEFLEET_API_KEY set): the CLI uploads datasets, the REST API creates and follows the run. State between
steps lives in /tmp/stack-state.json. Every wait is bounded; a step exits non-zero with the reason on failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import httpx

STATE = Path("/tmp/stack-state.json")
SERVER = os.environ["FACEFLEET_SERVER_URL"]
TINY_CONFIG: dict[str, Any] = {
    "backbone": "tiny",
    "embedding_dim": 16,
    "input_size": 32,
    "batch_size": 16,
    "steps": int(os.environ.get("STACK_RUN_STEPS", "8")),
    "checkpoint_interval": 4,
    "metrics_interval": 2,
    "data_workers": 0,
    "eval_pairs_per_dataset": 20,
    "cache_bytes": 8 << 20,
    "head": {"s": 16.0, "m2": 0.2},
    "optimizer": {"lr": 0.05},
    # Two training workers: one CPU each, so Ray places them on the head (1 CPU) and the worker container.
    "scaling": {"num_workers": int(os.environ.get("STACK_RUN_WORKERS", "2"))},
    "max_failures": 2,
}


def _state() -> dict[str, Any]:
    return json.loads(STATE.read_text()) if STATE.exists() else {}


def _save(**values: Any) -> None:
    STATE.write_text(json.dumps({**_state(), **values}))


def _client() -> httpx.Client:
    headers = {"Authorization": f"Bearer {os.environ['FACEFLEET_API_KEY']}"}
    return httpx.Client(base_url=SERVER, headers=headers, timeout=30)


def _cli(*args: str) -> str:
    done = subprocess.run(["facefleet", *args], capture_output=True, text=True, timeout=300)
    print(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"facefleet {' '.join(args)} exited {done.returncode}")
    return done.stdout


def register() -> None:
    out = "/tmp/synth"
    _cli("datasets", "synth", "--out", out, "--datasets", "2", "--identities", "8", "--images", "4",
         "--verification-identities", "6", "--verification-pairs", "40", "--size", "32", "--seed", "3")
    for index in (0, 1):  # two: the default config's gradient reversal needs at least two datasets
        name = f"stack-faces-{index}"
        _cli("datasets", "register", f"{out}/synth_{index}", "--name", name, "--server", SERVER)
    _cli("datasets", "register", f"{out}/verification", "--name", "stack-verify", "--kind", "verification",
         "--server", SERVER)
    with _client() as client:
        names = [d["name"] for d in client.get("/v1/datasets").raise_for_status().json()["items"]]
    if not {"stack-faces-0", "stack-faces-1", "stack-verify"} <= set(names):
        raise SystemExit(f"datasets not listed by the API: {names}")


def _body(**config: Any) -> dict[str, Any]:
    return {
        "datasets": ["stack-faces-0", "stack-faces-1"],
        "verification_sets": ["stack-verify"],
        "config": {**TINY_CONFIG, **config},
    }


def start_long() -> None:
    """A longer run for the kill-the-worker step: checkpoints to S3 every 20 steps."""
    with _client() as client:
        created = client.post("/v1/runs", json=_body(steps=400, checkpoint_interval=20, metrics_interval=20))
        if created.status_code >= 300:
            raise SystemExit(f"POST /v1/runs: {created.status_code} {created.text}")
    _save(long_run_id=created.json()["id"])
    print(f"run {created.json()['id']} created")


def wait_step() -> None:
    """Until the long run is past its second checkpoint (bounded)."""
    run_id, deadline = _state()["long_run_id"], time.monotonic() + 300
    with _client() as client:
        while time.monotonic() < deadline:
            view = client.get(f"/v1/runs/{run_id}").raise_for_status().json()
            if view["status"] in ("succeeded", "failed", "cancelled"):
                raise SystemExit(f"run {run_id} ended {view['status']} before the kill")
            if (view.get("step") or 0) >= 45:
                print(f"run {run_id} at step {view['step']} of {view['total_steps']}: kill the worker now")
                return
            time.sleep(1)
    raise SystemExit(f"run {run_id} did not reach step 45 in 300 s")


def finish_resumed() -> None:
    """The long run succeeds after the worker container was killed; its workers resumed from a checkpoint."""
    run_id, deadline = _state()["long_run_id"], time.monotonic() + 900
    with _client() as client:
        while time.monotonic() < deadline:
            view = client.get(f"/v1/runs/{run_id}").raise_for_status().json()
            if view["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(3)
    print(f"run {run_id}: {view['status']} at step {view.get('step')} (error: {view.get('error')})")
    dashboard = os.environ.get("STACK_RAY_DASHBOARD", "http://ray-head:8265")
    logs = httpx.get(f"{dashboard}/api/jobs/{view['launcher_job_id']}/logs", timeout=30).json()["logs"]
    resumed = [line.strip() for line in logs.splitlines() if "resumed from the checkpoint at step" in line]
    print("\n".join(resumed) or "no resume line in the Ray job's log")
    if view["status"] != "succeeded" or not resumed:
        raise SystemExit("the run did not resume from its checkpoint and succeed")


def run() -> None:
    body = {
        "datasets": ["stack-faces-0", "stack-faces-1"],
        "verification_sets": ["stack-verify"],
        "config": TINY_CONFIG,
    }
    deadline = time.monotonic() + float(os.environ.get("STACK_RUN_TIMEOUT", "900"))
    with _client() as client:
        created = client.post("/v1/runs", json=body)
        if created.status_code >= 300:
            raise SystemExit(f"POST /v1/runs: {created.status_code} {created.text}")
        run_id = created.json()["id"]
        _save(run_id=run_id)
        print(f"run {run_id} created")
        status = ""
        while time.monotonic() < deadline:
            view = client.get(f"/v1/runs/{run_id}").raise_for_status().json()
            if view["status"] != status:
                status = view["status"]
                print(f"{time.strftime('%H:%M:%S')} run {run_id}: {status}", flush=True)
            if status in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(3)
        print(json.dumps(view, indent=1, default=str)[:4000])
        if status != "succeeded":
            raise SystemExit(f"run {run_id} ended {status or 'nowhere'} (bounded wait)")
    nodes = _train_worker_nodes(view["launcher_job_id"])
    print(f"Ray job {view['launcher_job_id']}: training workers on {len(nodes)} node(s): {sorted(nodes)}")
    if len(nodes) != TINY_CONFIG["scaling"]["num_workers"]:
        raise SystemExit("the training workers did not spread over the head and the worker container")


def _train_worker_nodes(submission_id: str) -> set[str]:
    """The Ray nodes that ran the run's TrainWorker actors (Ray's state API on the head's dashboard)."""
    dashboard = os.environ.get("STACK_RAY_DASHBOARD", "http://ray-head:8265")
    with httpx.Client(base_url=dashboard, timeout=30) as ray:
        job_id = ray.get(f"/api/jobs/{submission_id}").raise_for_status().json()["job_id"]
        actors = ray.get("/api/v0/actors", params={"limit": 1000, "detail": "true"}).raise_for_status()
    return {
        actor["node_id"]
        for actor in actors.json()["data"]["result"]["result"]
        if actor.get("job_id") == job_id and "TrainWorker" in actor.get("class_name", "")
    }


def model() -> None:
    run_id = _state()["run_id"]
    with _client() as client:
        models = client.get("/v1/models").raise_for_status().json()["items"]
        versions = [
            version
            for entry in models
            for version in client.get(f"/v1/models/{entry['name']}/versions").raise_for_status().json()[
                "items"
            ]
            if version["run_id"] == run_id
        ]
    if not versions:
        raise SystemExit(f"no registered model version from run {run_id}: {models}")
    print(json.dumps(versions[0]["artifacts"], indent=1, default=str))
    bucket, _, prefix = os.environ["FACEFLEET_STORE_URL"].removeprefix("s3://").partition("/")
    s3 = boto3.client("s3", endpoint_url=os.environ["FACEFLEET_S3_ENDPOINT_URL"])
    # Artifact keys are relative to the store's prefix; each must be there with its recorded size.
    sizes = {
        item["Key"]: item["Size"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for item in page.get("Contents", [])
    }
    artifacts = versions[0]["artifacts"]
    wanted = [f"{prefix}/{entry['key']}" for entry in artifacts.values() if isinstance(entry, dict)]
    missing = [key for key in wanted if sizes.get(key) != _size(artifacts, key, prefix)]
    print(f"{len(sizes)} objects under s3://{bucket}/{prefix}; model artifacts: {wanted}")
    if not wanted or missing:
        raise SystemExit(f"model artifacts not in S3: {missing or 'none listed'}")


def _size(artifacts: dict[str, Any], key: str, prefix: str) -> int | None:
    sizes = (entry.get("size") for entry in artifacts.values() if f"{prefix}/{entry['key']}" == key)
    return next(sizes, None)


if __name__ == "__main__":
    steps = {"register": register, "run": run, "model": model, "start_long": start_long}
    steps |= {"wait_step": wait_step, "finish_resumed": finish_resumed}
    steps[sys.argv[1]]()
