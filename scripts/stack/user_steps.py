"""What a user does against the running compose stack; one step per call, run in a client container.

    python user_steps.py register|run|model|policy|device|terminal_installed
    python user_steps.py start_long|wait_step|finish_resumed   # around the kill of the Ray worker

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
# POST /v1/runs: the first run on a cluster waits for the launcher's pre-flight job on every Ray node (bounded
# at 180 s by the API); on this loaded 2-core machine that took more than the 30 s of every other request.
CREATE_RUN_TIMEOUT = 240.0
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
    # Connection retries: one boot saw "Temporary failure in name resolution" for `api` right after the
    # terminal container stopped (likely the network's DNS reloading; not confirmed).
    transport = httpx.HTTPTransport(retries=5)
    return httpx.Client(base_url=SERVER, headers=headers, timeout=30, transport=transport)


def _cli(*args: str) -> str:
    done = subprocess.run(["facefleet", *args], capture_output=True, text=True, timeout=300)
    print(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"facefleet {' '.join(args)} exited {done.returncode}")
    return done.stdout


def _synth(out: str, seed: int) -> None:
    """Two small synthetic training datasets and a verification set under ``out``."""
    sizes = {"datasets": 2, "identities": 8, "images": 4, "verification-identities": 6}
    flags = [f for name, value in sizes.items() for f in (f"--{name}", str(value))]
    _cli(
        "datasets",
        "synth",
        "--out",
        out,
        *flags,
        "--verification-pairs",
        "40",
        "--size",
        "32",
        "--seed",
        str(seed),
    )


def register() -> None:
    out = "/tmp/synth"
    _synth(out, seed=3)
    for index in (0, 1):  # two: the default config's gradient reversal needs at least two datasets
        name = f"stack-faces-{index}"
        _cli("datasets", "register", f"{out}/synth_{index}", "--name", name, "--server", SERVER)
    _cli(
        "datasets",
        "register",
        f"{out}/verification",
        "--name",
        "stack-verify",
        "--kind",
        "verification",
        "--server",
        SERVER,
    )
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
        body = _body(steps=400, checkpoint_interval=20, metrics_interval=20)
        created = client.post("/v1/runs", json=body, timeout=CREATE_RUN_TIMEOUT)
        if created.status_code >= 300:
            raise SystemExit(f"POST /v1/runs: {created.status_code} {created.text}")
    _save(long_run_id=created.json()["id"])
    print(f"run {created.json()['id']} created")


def _committed_checkpoint_step(s3: Any, run_id: int) -> int | None:
    """The step of the run's latest checkpoint that Ray Train has committed, from the checkpoint manager's
    snapshot in S3 (written after the controller registered a checkpoint that every rank has reported)."""
    bucket, _, prefix = os.environ["FACEFLEET_STORE_URL"].removeprefix("s3://").partition("/")
    key = f"{prefix}/runs/{run_id}/checkpoints/checkpoint_manager_snapshot.json"
    try:
        snapshot = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None
    latest = snapshot.get("latest_checkpoint_result") or {}
    step = (latest.get("metrics") or {}).get("step")
    return int(step) if step is not None else None


def wait_step() -> None:
    """Until the long run's checkpoint at step >= 40 is committed in S3 (bounded); then the script kills.

    The run's `step` in the API is not enough: rank 0 writes it at every metrics interval, but Ray Train
    commits a checkpoint only once its controller has polled every rank's report of it (a poll every 2 s,
    one queued report per worker). A worker killed before that poll takes its report of the newest
    checkpoint along, and the run resumes from the one before (an earlier boot: killed at 60, resumed at 20).
    """
    run_id, deadline = _state()["long_run_id"], time.monotonic() + 300
    s3 = boto3.client("s3", endpoint_url=os.environ["FACEFLEET_S3_ENDPOINT_URL"])
    with _client() as client:
        while time.monotonic() < deadline:
            view = client.get(f"/v1/runs/{run_id}").raise_for_status().json()
            if view["status"] in ("succeeded", "failed", "cancelled"):
                raise SystemExit(f"run {run_id} ended {view['status']} before the kill")
            committed = _committed_checkpoint_step(s3, run_id)
            if committed is not None and committed >= 40:
                _save(committed_step=committed)
                print(
                    f"run {run_id} at step {view['step']} of {view['total_steps']}, checkpoint at step "
                    f"{committed} committed in S3: kill the worker now"
                )
                return
            time.sleep(0.5)
    raise SystemExit(f"run {run_id} did not commit a checkpoint at step >= 40 in 300 s")


def finish_resumed() -> None:
    """The long run succeeds after the worker container was killed; its workers resumed from the checkpoint
    that was committed when the worker was killed (or a later one committed before the failure was seen)."""
    state = _state()
    run_id, deadline = state["long_run_id"], time.monotonic() + 900
    with _client() as client:
        while time.monotonic() < deadline:
            view = client.get(f"/v1/runs/{run_id}").raise_for_status().json()
            if view["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(3)
    print(f"run {run_id}: {view['status']} at step {view.get('step')} (error: {view.get('error')})")
    dashboard = os.environ.get("STACK_RAY_DASHBOARD", "http://ray-head:8265")
    logs = httpx.get(f"{dashboard}/api/jobs/{view['launcher_job_id']}/logs", timeout=30).json()["logs"]
    marker = "resumed from the checkpoint at step"
    resumed = [line.strip() for line in logs.splitlines() if marker in line]
    print("\n".join(resumed) or "no resume line in the Ray job's log")
    steps = {int(line.split(marker)[1].split()[0]) for line in resumed}
    committed = int(state["committed_step"])
    print(f"checkpoint committed at the kill: step {committed}; resumed from step(s) {sorted(steps)}")
    if view["status"] != "succeeded" or not steps:
        raise SystemExit("the run did not resume from its checkpoint and succeed")
    if min(steps) < committed:
        raise SystemExit(f"resumed from step {min(steps)}, before the checkpoint committed at {committed}")


def run() -> None:
    body = {
        "datasets": ["stack-faces-0", "stack-faces-1"],
        "verification_sets": ["stack-verify"],
        "config": TINY_CONFIG,
    }
    deadline = time.monotonic() + float(os.environ.get("STACK_RUN_TIMEOUT", "900"))
    with _client() as client:
        created = client.post("/v1/runs", json=body, timeout=CREATE_RUN_TIMEOUT)
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
            for version in client.get(f"/v1/models/{entry['name']}/versions")
            .raise_for_status()
            .json()["items"]
            if version["run_id"] == run_id
        ]
    if not versions:
        raise SystemExit(f"no registered model version from run {run_id}: {models}")
    _save(model_version_id=versions[0]["id"])
    print(f"model version id {versions[0]['id']}: {versions[0]['name']} v{versions[0]['version']}")
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


POLICY = "stack-retrain"


def _policy_runs(client: httpx.Client, policy_id: int) -> list[dict[str, Any]]:
    page = client.get("/v1/runs", params={"policy_id": policy_id, "limit": 50}).raise_for_status().json()
    return list(page["items"])


def policy() -> None:
    """A retrain policy with a dataset_added trigger fires exactly once on a new dataset version.

    The policy is created through the API; a new version of one of its datasets is uploaded with the CLI;
    the scheduler container (nothing else creates policy runs) consumes the version's `ready` event and
    starts one run (trigger dataset_added) on the Ray cluster. After the run ends, further scheduler ticks
    (every 5 s) must not fire again.
    """
    base_config = {key: value for key, value in TINY_CONFIG.items() if key != "scaling"}
    body = {
        "name": POLICY,
        "triggers": ["dataset_added"],
        "dataset_selector": {"names": ["stack-faces-0", "stack-faces-1"]},
        "verification_sets": ["stack-verify"],
        "base_config": {**base_config, "scaling": {"num_workers": 1}},
        "model_name": "stack-policy",
        "debounce_seconds": 0,
    }
    with _client() as client:
        created = client.post("/v1/policies", json=body)
        if created.status_code >= 300:
            raise SystemExit(f"POST /v1/policies: {created.status_code} {created.text}")
        policy_id = created.json()["id"]
        print(f"policy {policy_id} ({POLICY}) created: triggers {created.json()['triggers']}")
        before = _policy_runs(client, policy_id)
        if before:
            raise SystemExit(f"policy {policy_id} has runs before any new dataset version: {before}")
        # A new version (other content) of a dataset the policy selects: its `ready` event is the trigger.
        out = "/tmp/synth-v2"
        _synth(out, seed=5)
        _cli("datasets", "register", f"{out}/synth_1", "--name", "stack-faces-1", "--server", SERVER)
        versions = client.get("/v1/datasets/stack-faces-1/versions").raise_for_status().json()["items"]
        print(f"stack-faces-1 versions: {sorted(v['version'] for v in versions)}")
        if len(versions) < 2:
            raise SystemExit("the second registration did not create a new version of stack-faces-1")
        # Creating the run includes the ray launcher's pre-flight job on every Ray node (the scheduler's first
        # run: nothing cached; bounded at 180 s), which took over 2 minutes on this loaded machine.
        registered = time.monotonic()
        deadline = registered + 360
        while not (runs := _policy_runs(client, policy_id)):
            if time.monotonic() > deadline:
                view = client.get(f"/v1/policies/{policy_id}").json()
                failed = client.get("/v1/audit", params={"action": "policies.fire_failed"}).json()
                raise SystemExit(f"no run for policy {policy_id} in 360 s: {view}; fire_failed: {failed}")
            time.sleep(1)
        run = runs[0]
        print(
            f"run {run['id']} created {time.monotonic() - registered:.0f} s after the registration: "
            f"trigger {run['trigger']}, created_by {run['created_by']}"
        )
        if run["trigger"] != "dataset_added" or run["created_by"] != f"scheduler:policy:{POLICY}":
            raise SystemExit(f"run {run['id']} was not started by the scheduler for dataset_added: {run}")
        deadline = time.monotonic() + float(os.environ.get("STACK_RUN_TIMEOUT", "900"))
        while True:
            view = client.get(f"/v1/runs/{run['id']}").raise_for_status().json()
            state = client.get(f"/v1/policies/{policy_id}").raise_for_status().json()
            if view["status"] in ("succeeded", "failed", "cancelled") and state["active_run_id"] is None:
                break  # the run ended and the scheduler has taken note (follow_active_runs freed the policy)
            if time.monotonic() > deadline:
                raise SystemExit(f"run {run['id']} / policy {policy_id} not done in time: {view['status']}")
            time.sleep(3)
        print(
            f"run {run['id']}: {view['status']} at step {view['step']}; policy last_fired_at "
            f"{state['last_fired_at']}, pending_trigger {state['pending_trigger']}, "
            f"active_run_id {state['active_run_id']}"
        )
        if view["status"] != "succeeded":
            raise SystemExit(f"the policy's run {run['id']} ended {view['status']}: {view.get('error')}")
        audit = client.get("/v1/audit", params={"actor": "scheduler", "action": "runs.create"})
        events = audit.raise_for_status().json()["items"]
        mine = [e for e in events if (e.get("details") or {}).get("policy") == POLICY]
        print(f"scheduler audit runs.create for {POLICY}: {[e.get('details') for e in mine]}")
        time.sleep(20)  # four more scheduler ticks (every 5 s): nothing may fire again
        after = _policy_runs(client, policy_id)
        state = client.get(f"/v1/policies/{policy_id}").raise_for_status().json()
    print(f"20 s later: {len(after)} run(s) of policy {policy_id}; pending {state['pending_trigger']}")
    if len(after) != 1 or len(mine) != 1 or state["pending_trigger"] is not None:
        raise SystemExit(f"the policy fired {len(after)} times (audit: {len(mine)}), not exactly once")


TERMINAL_GROUP = "stack-terminals"


def device() -> None:
    """Register a terminal and roll the run's model out to its group; prints the one-time enrollment token."""
    version_id = _state()["model_version_id"]
    with _client() as client:
        registered = client.post("/v1/devices", json={"name": "stack-terminal-1", "group": TERMINAL_GROUP})
        if registered.status_code >= 300:
            raise SystemExit(f"POST /v1/devices: {registered.status_code} {registered.text}")
        device_id = registered.json()["device"]["id"]
        rollout = {"model_version_id": version_id, "group": TERMINAL_GROUP}
        deployed = client.post("/v1/deployments", json=rollout)
        if deployed.status_code >= 300:
            raise SystemExit(f"POST /v1/deployments: {deployed.status_code} {deployed.text}")
    _save(device_id=device_id, deployment_id=deployed.json()["id"])
    print(
        f"device {device_id} registered; deployment {deployed.json()['id']} of model version {version_id}",
        file=sys.stderr,
    )
    print(registered.json()["enrollment_token"])  # stdout: the token only (the script passes it on)


def terminal_installed() -> None:
    """The terminal container enrolled, installed the deployed model and reported it (bounded wait)."""
    state = _state()
    deadline = time.monotonic() + 300
    with _client() as client:
        while True:
            device_view = client.get(f"/v1/devices/{state['device_id']}").raise_for_status().json()
            rollout = client.get(f"/v1/deployments/{state['deployment_id']}").raise_for_status().json()
            statuses = {entry["device_id"]: entry["status"] for entry in rollout["devices"]}
            if (
                statuses.get(state["device_id"]) == "installed"
                and device_view["model_version_id"] == state["model_version_id"]
                and device_view["last_seen_at"]
            ):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"the terminal did not install the model in 300 s: {device_view} {rollout}")
            time.sleep(2)
    print(
        f"device {device_view['id']}: status {device_view['status']}, model_version_id "
        f"{device_view['model_version_id']}, agent {device_view['agent_version']}, last_seen_at "
        f"{device_view['last_seen_at']}; deployment {rollout['id']}: {rollout['status']}, {statuses}"
    )


if __name__ == "__main__":
    steps = {"register": register, "run": run, "model": model, "start_long": start_long}
    steps |= {"wait_step": wait_step, "finish_resumed": finish_resumed, "policy": policy}
    steps |= {"device": device, "terminal_installed": terminal_installed}
    steps[sys.argv[1]]()
