"""What a user does against the running compose stack; one step per call, run in a client container.

    python user_steps.py register|run|model

The client container is the facefleet image on the compose network (FACEFLEET_SERVER_URL=http://api:8000,
FACEFLEET_API_KEY set): the CLI uploads datasets, the REST API creates and follows the run. State between steps
lives in /tmp/stack-state.json. Every wait is bounded; a step exits non-zero with the reason on failure.
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
    _cli("datasets", "synth", "--out", out, "--datasets", "1", "--identities", "8", "--images", "4",
         "--verification-identities", "6", "--verification-pairs", "40", "--size", "32", "--seed", "3")
    _cli("datasets", "register", f"{out}/synth_0", "--name", "stack-faces", "--server", SERVER)
    _cli("datasets", "register", f"{out}/verification", "--name", "stack-verify", "--kind", "verification",
         "--server", SERVER)
    with _client() as client:
        names = [d["name"] for d in client.get("/v1/datasets").raise_for_status().json()["items"]]
    if not {"stack-faces", "stack-verify"} <= set(names):
        raise SystemExit(f"datasets not listed by the API: {names}")


def run() -> None:
    body = {"datasets": ["stack-faces"], "verification_sets": ["stack-verify"], "config": TINY_CONFIG}
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


def model() -> None:
    run_id = _state()["run_id"]
    with _client() as client:
        models = client.get("/v1/models").raise_for_status().json()["items"]
        versions = [
            version
            for entry in models
            for version in client.get(f"/v1/models/{entry['name']}/versions").raise_for_status().json()["items"]
            if version["run_id"] == run_id
        ]
    if not versions:
        raise SystemExit(f"no registered model version from run {run_id}: {models}")
    print(json.dumps(versions[0]["artifacts"], indent=1, default=str))
    bucket, _, prefix = os.environ["FACEFLEET_STORE_URL"].removeprefix("s3://").partition("/")
    s3 = boto3.client("s3", endpoint_url=os.environ["FACEFLEET_S3_ENDPOINT_URL"])
    keys = [
        item["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for item in page.get("Contents", [])
    ]
    wanted = [str(uri).removeprefix(f"s3://{bucket}/") for uri in _uris(versions[0]["artifacts"])]
    missing = [key for key in wanted if key not in keys]
    print(f"{len(keys)} objects under s3://{bucket}/{prefix}; model artifacts: {wanted}")
    if not wanted or missing:
        raise SystemExit(f"model artifacts not in S3: {missing or 'none listed'}")


def _uris(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value.startswith("s3://") else []
    if isinstance(value, dict):
        return [uri for item in value.values() for uri in _uris(item)]
    if isinstance(value, list):
        return [uri for item in value for uri in _uris(item)]
    return []


if __name__ == "__main__":
    {"register": register, "run": run, "model": model}[sys.argv[1]]()
