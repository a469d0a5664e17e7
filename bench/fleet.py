"""A simulated terminal fleet against `facefleet serve` (subprocess) on PostgreSQL and SQLite.

Two tables:

1. **Fleet load.** N terminals (real HTTP/1.1 keep-alive from bench/fleet_client.py's raw asyncio streams,
   each terminal with its own device credential) poll their
   assignment (``If-None-Match``) and heartbeat on the agent's cadence (poll : heartbeat = 30 s : 60 s),
   compressed in time to an offered request rate; an administrator lists runs/models/devices/policies and
   fires a policy meanwhile; a deployment to the whole fleet starts at a fifth of the run and every terminal
   that sees it reports ``downloading`` then ``installed``. Prints per route: requests, errors, 503s,
   achieved rate, p50/p99 (latency counted from when a request was due: open loop, no coordinated
   omission), ratios against ``/healthz`` measured in the same run, the server's CPU per request, and the
   time for the deployment to reach every device; then p50/p99 per route before, during and after the
   rollout (requests by when they were due).
2. **Growth.** The same read routes with devices, run_metrics, audit_events and device_deployments at
   10^3, 10^5 and 10^6 rows (bulk-inserted with SQL); latency should stay flat.

    .venv/bin/python bench/fleet.py --quick          # ~3 min: 1,000 terminals, growth to 10^5
    .venv/bin/python bench/fleet.py                  # 1,000 and 10,000 terminals, growth to 10^6
    .venv/bin/python bench/fleet.py --db postgres --devices 10000 --rate 500 --skip-growth  # real cadence
    .venv/bin/python bench/fleet.py --db postgres --devices 10000 --rate 500 --skip-growth \
        --release-per-minute 2000                 # the same rollout paced (issue 21)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from fleet_client import Job, LoadClient, Recorder, Reply, Route, build_request, one_request  # noqa: E402
from fleet_data import Seeded, grow, seed  # noqa: E402

from bench._support import free_port, process_tree_cpu, running_postgres  # noqa: E402
from facefleet.platform.db import migrate  # noqa: E402
from facefleet.platform.db.session import make_engine  # noqa: E402
from facefleet.platform.store.local import LocalStore  # noqa: E402

POLL_S, HEARTBEAT_S = 30.0, 60.0  # the agent's real cadence, compressed by --rate


# ---------------------------------------------------------------- measuring


IN_FLIGHT = 64  # kept-alive connections the load generator holds (requests in flight at once)


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run`` on uvloop when installed (the load generator's own CPU per request matters)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


# ---------------------------------------------------------------- the server


@contextlib.contextmanager
def serve(env: dict[str, str], workers: int) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    cmd = [sys.executable, "-m", "facefleet.cli", "serve", "--port", str(port), "--no-migrate"]
    server = subprocess.Popen(
        [*cmd, "--workers", str(workers), "--no-access-log"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            if time.time() > deadline:
                raise RuntimeError("facefleet serve did not answer /healthz within 120 s")
            if server.poll() is not None:
                raise RuntimeError(f"facefleet serve exited: {server.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            time.sleep(0.3)
        time.sleep(1.0 if workers > 1 else 0.0)  # let every worker come up
        yield base, server
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()


@contextlib.contextmanager
def database(kind: str, tmp: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'bench.db'}"
        return
    with running_postgres(max_connections=300) as server:
        yield server.create_database("bench")


def environment(url: str, tmp: Path, args: argparse.Namespace) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEFLEET_")}
    env.update(
        PYTHONPATH=str(ROOT),
        FACEFLEET_DATA_DIR=str(tmp),
        FACEFLEET_DATABASE_URL=url,
        FACEFLEET_STORE_URL=(tmp / "store").as_uri(),
        FACEFLEET_LOG_LEVEL="WARNING",
        FACEFLEET_API_WORKERS=str(args.workers),
    )
    return env


# ---------------------------------------------------------------- the fleet


@dataclass
class FleetRun:
    recorder: Recorder
    devices: int
    seconds: float
    offered: float
    poll_s: float
    cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    deployed_at: float | None = None
    reached_all_s: float | None = None
    installed: int = 0
    unanswered: int = 0
    load: list[float] = field(default_factory=list)  # 1-minute load average, every 5 s of the phase
    release_per_minute: int | None = None  # the deployment's pacing (None: every device at once)


HEARTBEAT = "POST /v1/device/heartbeat"
POLL = "GET /v1/device/assignment"
STATUS = "POST /v1/device/status"


class Terminal:
    """One simulated terminal: its credential, what it last saw (ETag, model) and its pre-built requests."""

    __slots__ = ("auth", "etag", "installed", "next_poll", "next_beat", "poll_raw", "beat_raw")

    def __init__(self, credential: str, next_poll: float, next_beat: float) -> None:
        self.auth = {"Authorization": f"Bearer {credential}"}
        self.etag: str | None = None
        self.installed: int | None = None
        self.next_poll, self.next_beat = next_poll, next_beat
        self.poll_raw = build_request("GET", "/v1/device/assignment", self.auth)
        self.beat_raw = b""
        self._beat()

    def _beat(self) -> None:
        body = json.dumps(
            {"agent_version": "bench", "model_version_id": self.installed, "health": {"users": 3}}
        ).encode()
        self.beat_raw = build_request(
            "POST", "/v1/device/heartbeat", {**self.auth, "Content-Type": "application/json"}, body
        )

    def saw(self, etag: str | None) -> None:
        if etag and etag != self.etag:
            self.etag = etag
            self.poll_raw = build_request(
                "GET", "/v1/device/assignment", {**self.auth, "If-None-Match": etag}
            )

    def forget(self) -> None:
        self.etag = None
        self.poll_raw = build_request("GET", "/v1/device/assignment", self.auth)

    def has(self, model_version_id: int) -> None:
        self.installed = model_version_id
        self._beat()


class Fleet:
    """The terminals' schedule as timer callbacks (no task per terminal): poll every ``poll_s``, heartbeat
    every ``2 * poll_s``; a poll that shows a new deployment is followed at once by the agent's status
    reports (``downloading`` unless already sent, then ``installed``)."""

    def __init__(self, run: FleetRun, client: LoadClient, end: float) -> None:
        self.run, self.client, self.end = run, client, end

    def start(self, terminal: Terminal) -> None:
        self._next(terminal)

    def _next(self, t: Terminal) -> None:
        due = min(t.next_poll, t.next_beat)
        if due >= self.end:
            return
        if due == t.next_beat:
            t.next_beat += 2 * self.run.poll_s
            self.client.submit(Job(due, HEARTBEAT, t.beat_raw, lambda _reply: self._next(t)))
            return
        t.next_poll += self.run.poll_s
        self.client.submit(Job(due, POLL, t.poll_raw, lambda reply: self._polled(t, reply)))

    def _polled(self, t: Terminal, reply: Reply | None) -> None:
        if reply is None or reply.status != 200:
            self._next(t)
            return
        t.saw(reply.etag)
        answer = json.loads(reply.body)
        if answer["action"] == "install" and answer["status"] in ("pending", "downloading"):
            steps = ["downloading", "installed"] if answer["status"] == "pending" else ["installed"]
            self._report(t, answer["deployment_id"], answer["model"]["model_version_id"], steps)
            return
        self._next(t)

    def _report(self, t: Terminal, deployment: int, version: int, steps: list[str]) -> None:
        body = json.dumps({"deployment_id": deployment, "status": steps[0]}).encode()
        raw = build_request("POST", "/v1/device/status", {**t.auth, "Content-Type": "application/json"}, body)

        def done(reply: Reply | None) -> None:
            if reply is None or reply.status != 200:
                t.forget()  # like the agent: the next poll fetches the assignment again and retries
                self._next(t)
                return
            t.saw(reply.etag)
            if len(steps) > 1:
                self._report(t, deployment, version, steps[1:])
                return
            t.has(version)
            run = self.run
            run.installed += 1
            if run.installed == run.devices and run.deployed_at is not None:
                run.reached_all_s = time.perf_counter() - run.deployed_at
            self._next(t)

        self.client.submit(Job(time.perf_counter(), STATUS, raw, done))


ADMIN_READS = [
    ("GET /v1/runs?limit=20", "/v1/runs?limit=20"),
    ("GET /v1/models", "/v1/models"),
    ("GET /v1/devices?limit=20", "/v1/devices?limit=20"),
    ("GET /v1/policies?limit=20", "/v1/policies?limit=20"),
    ("GET /v1/policies/{id}", "/v1/policies/{policy}"),
]


def admin_jobs(seeded: Seeded, rate: float, start: float, end: float) -> list[Job]:
    """The administrator's requests (one write in ten) and the ``/healthz`` baseline, at fixed due times."""
    auth = {"Authorization": f"Bearer {seeded.admin_token}"}
    fire = build_request("POST", f"/v1/policies/{seeded.policy_id}:fire", auth)
    reads = [
        (name, build_request("GET", path.format(policy=seeded.policy_id), auth)) for name, path in ADMIN_READS
    ]
    jobs = []
    i = 0
    due = start
    while due < end and rate > 0:
        if i % 10 == 9:
            jobs.append(Job(due, "POST /v1/policies/{id}:fire", fire))
        else:
            name, raw = reads[i % len(reads)]
            jobs.append(Job(due, name, raw))
        i += 1
        due = start + i / rate
    health = build_request("GET", "/healthz")
    jobs += [Job(start + i / 10, "GET /healthz (baseline)", health) for i in range(int((end - start) * 10))]
    return jobs


async def deploy(run: FleetRun, host: str, port: int, seeded: Seeded, at: float) -> None:
    """The rollout to the whole fleet, on its own connection (its answer lists every device)."""
    await asyncio.sleep(max(0.0, at - time.perf_counter()))
    run.deployed_at = time.perf_counter()
    fields: dict[str, Any] = {"model_version_id": seeded.model_version_id, "group": seeded.group}
    if run.release_per_minute is not None:
        fields["release_per_minute"] = run.release_per_minute
    body = json.dumps(fields).encode()
    headers = {"Authorization": f"Bearer {seeded.admin_token}", "Content-Type": "application/json"}
    raw = build_request("POST", "/v1/deployments", headers, body)
    try:
        reply: Reply | None = await one_request(host, port, raw, timeout=120)
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        reply = None
    run.recorder.add("POST /v1/deployments (whole fleet)", at, reply.status if reply else None)


async def drive_fleet(base: str, seeded: Seeded, run: FleetRun, admin_rate: float, pid: int) -> None:
    host, port = base.removeprefix("http://").split(":")
    client = LoadClient(host, int(port), run.recorder, connections=IN_FLIGHT)
    await client.start()
    start = time.perf_counter() + 1.0
    end = start + run.seconds
    cpu0, client0 = process_tree_cpu(pid), time.process_time()
    fleet = Fleet(run, client, end)
    for credential in seeded.credentials:
        fleet.start(
            Terminal(
                credential,
                next_poll=start + random.uniform(0, run.poll_s),
                next_beat=start + random.uniform(0, 2 * run.poll_s),
            )
        )
    for job in admin_jobs(seeded, admin_rate, start, end):
        client.submit(job)

    async def sample_load() -> None:
        while time.perf_counter() < end:
            run.load.append(os.getloadavg()[0])
            await asyncio.sleep(5)

    sampler = asyncio.create_task(sample_load())
    await deploy(run, host, int(port), seeded, start + run.seconds / 5)
    await asyncio.sleep(max(0.0, end - time.perf_counter()))
    run.unanswered = await client.drain(timeout=60)
    await sampler
    run.cpu_s = process_tree_cpu(pid) - cpu0
    run.client_cpu_s = time.process_time() - client0
    await client.close()


def fleet_table(db: str, run: FleetRun, workers: int, elapsed: float) -> None:
    rec = run.recorder.routes
    base = rec.get("GET /healthz (baseline)", Route())
    total = sum(len(r.latencies) + r.rejected for r in rec.values())
    print(
        f"\n## fleet: {run.devices:,} terminals on {db}, {workers} worker(s), {run.seconds:.0f} s; "
        "poll every "
        f"{run.poll_s:.1f} s, heartbeat every {2 * run.poll_s:.1f} s (real cadence 30/60 s: time x"
        f"{POLL_S / run.poll_s:.2f}); offered terminal rate {run.offered:.0f} req/s; rollout "
        + (
            f"paced at {run.release_per_minute:,} devices per minute of server time\n"
            if run.release_per_minute
            else "releasing every device at once\n"
        )
    )
    print("| route | ok | errors | 503 | req/s | p50 ms | p99 ms | p50/base | p99/base |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in sorted(rec.items(), key=lambda kv: (kv[0] != "GET /healthz (baseline)", kv[0])):
        p50, p99 = r.pct(0.5), r.pct(0.99)
        print(
            f"| {name} | {len(r.latencies)} | {r.errors} | {r.rejected} | {len(r.latencies) / elapsed:.1f} | "
            f"{p50:.1f} | {p99:.1f} | {p50 / base.pct(0.5):.1f} | {p99 / base.pct(0.99):.1f} |"
        )
    if run.deployed_at is not None:
        phases_table(run)
    reach = f"{run.reached_all_s:.1f} s" if run.reached_all_s is not None else "NOT REACHED"
    print(
        f"\nserver CPU {run.cpu_s:.1f} s for {total} answered requests: "
        f"{run.cpu_s / max(total, 1) * 1000:.2f} "
        f"ms CPU per request; deployment reached {run.installed}/{run.devices} devices, all in {reach} "
        f"(one poll interval is {run.poll_s:.1f} s); {run.unanswered} requests unanswered at the end"
    )
    print(
        f"load generator: {run.client_cpu_s:.1f} s CPU ({run.client_cpu_s / max(total, 1) * 1000:.2f} ms per "
        f"request); the phase took {elapsed:.0f} s of wall time for {run.seconds:.0f} s of schedule: where "
        "that is much longer, the machine (client and server together) fell behind the offered rate and the "
        "latencies above are mostly queueing"
    )
    if run.load:
        print(
            f"load average (1 min) during the phase: {min(run.load):.1f}-{max(run.load):.1f}, "
            f"median {sorted(run.load)[len(run.load) // 2]:.1f} (this benchmark's own processes included)"
        )


def phases_table(run: FleetRun) -> None:
    """p50 / p99 per route before the rollout (steady state), during it, and after every device had it."""
    assert run.deployed_at is not None
    done = run.deployed_at + run.reached_all_s if run.reached_all_s is not None else float("inf")
    phases = [("steady state (before the rollout)", 0.0, run.deployed_at)]
    phases.append(("rollout (until every device installed)", run.deployed_at, done))
    phases.append(("after the rollout", done, float("inf")))
    print("\n| route | " + " | ".join(f"{name}: n, p50 / p99 ms" for name, _, _ in phases) + " |")
    print("|---|" + "---|" * len(phases))
    for name, route in sorted(run.recorder.routes.items()):
        cells = []
        for _, start, end in phases:
            part = route.between(start, end)
            cells.append(
                f"{len(part.latencies)}, {part.pct(0.5):.1f} / {part.pct(0.99):.1f}"
                if part.latencies
                else "-"
            )
        print(f"| {name} | " + " | ".join(cells) + " |")


def fleet(db: str, devices: int, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="facefleet-fleet-") as tmpdir, database(db, Path(tmpdir)) as url:
        tmp = Path(tmpdir)
        migrate.upgrade(url)
        engine = make_engine(url)
        seeded = seed(engine, LocalStore(tmp / "store"), devices=devices)
        engine.dispose()
        poll_s = devices * (1 + POLL_S / HEARTBEAT_S) / args.rate
        seconds = max(args.seconds, 3.5 * poll_s)
        if args.release_per_minute:
            # The rollout starts at a fifth of the phase and needs devices / rate minutes plus a poll or two.
            rollout_s = devices / args.release_per_minute * 60
            seconds = max(seconds, (rollout_s + 1.5 * poll_s) / 0.8)
        run = FleetRun(
            Recorder(), devices, seconds, args.rate, poll_s, release_per_minute=args.release_per_minute
        )
        with serve(environment(url, tmp, args), args.workers) as (base, server):
            began = time.perf_counter()
            run_loop(drive_fleet(base, seeded, run, args.admin_rate, server.pid))
            elapsed = time.perf_counter() - began - 1.0
        fleet_table(db, run, args.workers, elapsed)


# ---------------------------------------------------------------- growth


async def measure(
    base: str,
    name: str,
    method: str,
    path: str,
    headers: dict[str, str],
    rate: float,
    seconds: float,
    recorder: Recorder,
) -> None:
    host, port = base.removeprefix("http://").split(":")
    client = LoadClient(host, int(port), recorder, connections=16)
    await client.start()
    raw = build_request(method, path, headers)
    start = time.perf_counter() + 0.2
    for i in range(int(rate * seconds)):
        client.submit(Job(start + i / rate, name, raw))
    await client.drain(timeout=120)
    await client.close()


def growth(db: str, sizes: list[int], args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="facefleet-growth-") as tmpdir, database(db, Path(tmpdir)) as url:
        tmp = Path(tmpdir)
        migrate.upgrade(url)
        engine = make_engine(url)
        seeded = seed(engine, LocalStore(tmp / "store"), devices=100, group="lobby")
        admin = {"Authorization": f"Bearer {seeded.admin_token}"}
        device = {"Authorization": f"Bearer {seeded.credentials[50]}"}
        results: dict[int, Recorder] = {}
        with serve(environment(url, tmp, args), args.workers) as (base, _server):
            created = httpx.post(
                f"{base}/v1/deployments",
                headers=admin,
                json={"model_version_id": seeded.model_version_id, "group": "lobby"},
                timeout=60,
            )
            assert created.status_code == 201, created.text
            mid = seeded.device_ids[50]
            routes = [
                ("GET /healthz (baseline)", "GET", "/healthz", {}),
                ("GET /v1/devices?limit=20", "GET", "/v1/devices?limit=20", admin),
                ("GET /v1/devices?group=..&limit=20", "GET", "/v1/devices?group=lobby&limit=20", admin),
                ("GET /v1/devices?after=..&limit=20", "GET", f"/v1/devices?after={mid}&limit=20", admin),
                ("GET /v1/devices/{id}", "GET", f"/v1/devices/{mid}", admin),
                ("GET /v1/audit?limit=20", "GET", "/v1/audit?limit=20", admin),
                (
                    "GET /v1/audit?action=..&limit=20",
                    "GET",
                    "/v1/audit?action=deployments.create&limit=20",
                    admin,
                ),
                ("GET /v1/runs/{id}/metrics", "GET", f"/v1/runs/{seeded.run_id}/metrics", admin),
                ("GET /v1/device/assignment", "GET", "/v1/device/assignment", device),
            ]
            for size in sizes:
                began = time.perf_counter()
                counts = grow(
                    engine, rows=size, run_id=seeded.run_id, model_version_id=seeded.model_version_id
                )
                print(
                    f"[growth {db}] tables at {counts} ({time.perf_counter() - began:.0f} s to insert)",
                    flush=True,
                )
                recorder = Recorder()
                for name, method, path, headers in routes:
                    run_loop(
                        measure(
                            base, name, method, path, headers, args.growth_rate, args.growth_seconds, recorder
                        )
                    )
                results[size] = recorder
        engine.dispose()
    growth_table(db, sizes, results, [r[0] for r in routes], args)


def growth_table(
    db: str, sizes: list[int], results: dict[int, Recorder], names: list[str], args: argparse.Namespace
) -> None:
    print(
        f"\n## growth on {db}: p50 / p99 ms at {args.growth_rate:g} req/s per route; devices, run_metrics, "
        f"audit_events and device_deployments each at the size shown\n"
    )
    head = " | ".join(f"10^{len(str(s)) - 1} p50 / p99" for s in sizes)
    print(
        f"| route | {head} | p99 ratio 10^{len(str(sizes[-1])) - 1} / 10^{len(str(sizes[0])) - 1} | "
        f"p99 / base at 10^{len(str(sizes[-1])) - 1} | errors |"
    )
    print("|---|" + "---|" * (len(sizes) + 3))
    for name in names:
        cells = []
        for size in sizes:
            r = results[size].routes.get(name, Route())
            cells.append(f"{r.pct(0.5):.1f} / {r.pct(0.99):.1f}")
        first, last = results[sizes[0]].routes[name], results[sizes[-1]].routes[name]
        base = results[sizes[-1]].routes["GET /healthz (baseline)"]
        errors = sum(results[s].routes[name].errors + results[s].routes[name].rejected for s in sizes)
        print(
            f"| {name} | {' | '.join(cells)} | {last.pct(0.99) / first.pct(0.99):.2f} | "
            f"{last.pct(0.99) / base.pct(0.99):.1f} | {errors} |"
        )


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 terminals, growth to 10^5, short phases")
    parser.add_argument("--db", default="postgres,sqlite", help="comma-separated: postgres, sqlite")
    parser.add_argument("--devices", default=None, help="comma-separated fleet sizes (default 1000,10000)")
    parser.add_argument("--rate", type=float, default=200.0, help="offered terminal requests per second")
    parser.add_argument("--admin-rate", type=float, default=20.0, help="admin requests per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="fleet phase length (at least 3.5 polls)")
    parser.add_argument("--workers", type=int, default=2, help="FACEFLEET_API_WORKERS for the server")
    parser.add_argument(
        "--release-per-minute",
        type=int,
        default=None,
        help="pace the deployment (devices per minute of server time; default: all at once)",
    )
    parser.add_argument("--growth", default=None, help="comma-separated table sizes (default 1e3,1e5,1e6)")
    parser.add_argument("--growth-rate", type=float, default=50.0)
    parser.add_argument("--growth-seconds", type=float, default=4.0)
    parser.add_argument("--skip-fleet", action="store_true")
    parser.add_argument("--skip-growth", action="store_true")
    args = parser.parse_args()
    # Stopped with SIGTERM (timeout, kill), still stop the server and the throwaway PostgreSQL.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.quick:
        args.devices = args.devices or "1000"
        args.growth = args.growth or "1e3,1e5"
        args.seconds = min(args.seconds, 30.0)
        args.growth_seconds = min(args.growth_seconds, 3.0)
    sizes = [int(float(s)) for s in (args.growth or "1e3,1e5,1e6").split(",")]
    fleet_sizes = [int(s) for s in (args.devices or "1000,10000").split(",")]
    print(
        f"# bench/fleet.py on {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"load average {os.getloadavg()[0]:.1f} at start"
    )
    for db in args.db.split(","):
        if not args.skip_fleet:
            for devices in fleet_sizes:
                fleet(db, devices, args)
        if not args.skip_growth:
            growth(db, sizes, args)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end (other work on this machine competes)")


if __name__ == "__main__":
    main()
