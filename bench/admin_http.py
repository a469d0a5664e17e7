"""CPU per request of the admin routes over real HTTP (``facefleet serve``, 1 worker), one route at a time.

Where ``bench/fleet_profile.py`` calls the ASGI app in process, this measures what a request costs the
server through uvicorn: the API process tree's CPU (worker threads included; PostgreSQL's backends apart)
divided by the requests answered, at a fixed offered rate well below saturation. Ratios are against
``GET /healthz`` in the same server.

    .venv/bin/python bench/admin_http.py --db postgres --rate 100 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from fleet import ADMIN_READS, database, environment, run_loop, serve  # noqa: E402
from fleet_client import Job, LoadClient, Recorder, build_request  # noqa: E402
from fleet_data import seed  # noqa: E402

from bench._support import process_tree_cpu  # noqa: E402
from facefleet.platform.db import migrate  # noqa: E402
from facefleet.platform.db.session import make_engine  # noqa: E402
from facefleet.platform.store.local import LocalStore  # noqa: E402


async def drive(
    into: list[tuple[Recorder, float]], base: str, raw: bytes, name: str, args: argparse.Namespace, pid: int
) -> None:
    """Send ``raw`` at ``args.rate`` for ``args.seconds``; append (latencies, the server's CPU seconds)."""
    rate, seconds = args.rate, args.seconds
    host, port = base.removeprefix("http://").split(":")
    recorder = Recorder()
    client = LoadClient(host, int(port), recorder, connections=args.connections)
    await client.start()
    start = time.perf_counter() + 0.5
    n = int(rate * seconds)
    cpu0 = process_tree_cpu(pid)
    for i in range(n):
        client.submit(Job(start + i / rate, name, raw))
    await asyncio.sleep(max(0.0, start + seconds - time.perf_counter()))
    await client.drain(timeout=60)
    cpu = process_tree_cpu(pid) - cpu0
    await client.close()
    into.append((recorder, cpu))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="postgres")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--connections", type=int, default=16, help="kept-alive connections of the client")
    parser.add_argument(
        "--routes", default="", help="comma-separated substrings: only routes whose name has one"
    )
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="facefleet-admin-") as tmpdir,
        database(args.db, Path(tmpdir)) as url,
    ):
        tmp = Path(tmpdir)
        migrate.upgrade(url)
        engine = make_engine(url)
        seeded = seed(engine, LocalStore(tmp / "store"), devices=args.devices)
        engine.dispose()
        auth = {"Authorization": f"Bearer {seeded.admin_token}"}
        routes = [
            ("GET /healthz", build_request("GET", "/healthz")),
            *(
                (name, build_request("GET", path.format(policy=seeded.policy_id), auth))
                for name, path in ADMIN_READS
            ),
            (
                "POST /v1/policies/{id}:fire",
                build_request("POST", f"/v1/policies/{seeded.policy_id}:fire", auth),
            ),
        ]
        if args.routes:
            routes = [
                r for r in routes if r[0] == "GET /healthz" or any(k in r[0] for k in args.routes.split(","))
            ]
        with serve(environment(url, tmp, args), args.workers) as (base, server):
            cpu0 = process_tree_cpu(server.pid)
            time.sleep(args.seconds)
            idle = (process_tree_cpu(server.pid) - cpu0) / args.seconds
            rows = []
            for name, raw in routes:
                measured: list[tuple[Recorder, float]] = []
                run_loop(drive(measured, base, raw, name, args, server.pid))
                recorder, cpu = measured[0]
                route = recorder.routes[name]
                answered = len(route.latencies) + route.rejected
                rows.append(
                    (name, cpu / max(answered, 1) * 1000, route.pct(0.5), route.pct(0.99), route.errors)
                )
        base_ms = rows[0][1]
        print(
            f"\n{args.db}, {args.workers} worker(s), {args.rate:.0f} req/s for {args.seconds:.0f} s per route"
        )
        print("| route | CPU ms / request | ratio to /healthz | p50 ms | p99 ms | errors |")
        print("|---|---|---|---|---|---|")
        for name, ms, p50, p99, errors in rows:
            print(f"| {name} | {ms:.2f} | {ms / base_ms:.1f} | {p50:.1f} | {p99:.1f} | {errors} |")
        print(f"\nidle server, no requests: {idle * 100:.1f} % of a core")


if __name__ == "__main__":
    main()
