"""Drive the real API server (uvicorn subprocess, SQLite, loopback) at a fixed request rate.

Open-loop load: request i is due at start + i/rate whatever earlier answers did, sent by a bounded asyncio
client; latency counts from the due time, so a slow server cannot hide queueing (no coordinated omission).
The client is aiohttp by default: httpx's async client needed more CPU per request than the server on a
2-core machine and saturated first, measuring itself (``--client httpx`` is kept). Prints p50/p99 latency
and throughput for the administrator's read routes (policies, devices, runs, models), a write route and
/healthz (the baseline in the same process: no auth, no database), with the server's CPU per answered request
(all its processes, from /proc). Target: read p99 < 50 ms.

    .venv/bin/python bench/api.py [--rate 200] [--seconds 10] [--workers 1] [--client aiohttp|httpx]
                                  [--policies-only]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from _support import process_tree_cpu

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    name: str
    latencies: list[float]
    errors: int
    elapsed: float
    server_cpu_ms: float = float("nan")  # the server's CPU (all its processes) per request

    def pct(self, q: float) -> float:
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(q * len(data)))] * 1000 if data else float("nan")

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def seed(env: dict[str, str]) -> tuple[str, int]:
    """Migrate; an admin key, 20 policies, devices and runs, a model; return the key and a policy id."""
    code = (
        "from facefleet.platform.db import migrate\n"
        "from facefleet.platform.db.session import session_scope\n"
        "from facefleet.platform.settings import get_settings\n"
        "from facefleet.platform.auth import create_api_key\n"
        "from facefleet.platform.policies.service import create_policy\n"
        "from facefleet.platform.policies.schemas import PolicyCreate\n"
        "migrate.upgrade(get_settings().effective_database_url)\n"
        "with session_scope() as s:\n"
        "    key, token = create_api_key(s, name='bench', role='admin')\n"
        "    ids = [create_policy(s, spec=PolicyCreate(name=f'p{i}', triggers=['manual'])).id\n"
        "           for i in range(20)]\n"
        "    from facefleet.platform.db.models import ModelVersion, Run\n"
        "    from facefleet.platform.devices.service import register_device\n"
        "    for i in range(20):\n"
        "        register_device(s, name=f'd{i}', group='bench')\n"
        "        s.add(Run(name=f'r{i}', status='succeeded', config={'steps': 100, 'lr': 0.1}))\n"
        "    s.add(ModelVersion(name='bench', version=1, card_sha256='0' * 64))\n"
        "print(token, ids[0])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    token, policy_id = out.stdout.split()
    return token, int(policy_id)


def start_server(env: dict[str, str], port: int, workers: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "facefleet.api.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--workers",
            str(workers),
        ],
        env=env,
        cwd=ROOT,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("the server did not start")


Send = Callable[[str, str], Awaitable[int]]


async def drive(
    send: Send, name: str, method: str, path: str, rate: float, seconds: float, concurrency: int
) -> Result:
    total = int(rate * seconds)
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.1

    async def one(i: int) -> None:
        nonlocal errors
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - loop.time()))
        async with gate:
            try:
                ok = await send(method, path) < 400
            except Exception:  # noqa: BLE001 - any transport error counts as a failed request
                ok = False
        if ok:
            latencies.append(loop.time() - due)
        else:
            errors += 1

    await asyncio.gather(*(one(i) for i in range(total)))
    return Result(name, latencies, errors, loop.time() - start)


@asynccontextmanager
async def open_client(kind: str, base: str, token: str, concurrency: int) -> AsyncIterator[Send]:
    headers = {"Authorization": f"Bearer {token}"}
    if kind == "aiohttp":
        import aiohttp

        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(base, headers=headers, connector=connector) as session:

            async def send_aiohttp(method: str, path: str) -> int:
                async with session.request(method, path) as response:
                    await response.read()
                    return response.status

            yield send_aiohttp
        return
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=30) as client:

        async def send_httpx(method: str, path: str) -> int:
            return (await client.request(method, path)).status_code

        yield send_httpx


async def bench(
    base: str, token: str, policy_id: int, server_pid: int, args: argparse.Namespace
) -> list[Result]:
    rate, seconds, concurrency = args.rate, args.seconds, args.concurrency
    async with open_client(args.client, base, token, concurrency) as send:
        await drive(send, "warm-up", "GET", "/v1/policies", rate, 1.0, concurrency)
        routes = [
            ("GET /healthz (baseline)", "GET", "/healthz"),
            (f"GET /v1/policies/{policy_id} (read one)", "GET", f"/v1/policies/{policy_id}"),
            ("GET /v1/policies?limit=20 (read list)", "GET", "/v1/policies?limit=20"),
        ]
        if not args.policies_only:  # the other admin reads bench/fleet.py drives beside the fleet
            routes += [
                ("GET /v1/devices?limit=20 (read list)", "GET", "/v1/devices?limit=20"),
                ("GET /v1/runs?limit=20 (read list)", "GET", "/v1/runs?limit=20"),
                ("GET /v1/models (read list)", "GET", "/v1/models"),
            ]
        routes.append(
            (f"POST /v1/policies/{policy_id}:fire (write)", "POST", f"/v1/policies/{policy_id}:fire")
        )
        results = []
        for name, method, path in routes:
            cpu0 = process_tree_cpu(server_pid)
            result = await drive(send, name, method, path, rate, seconds, concurrency)
            answered = len(result.latencies) + result.errors
            result.server_cpu_ms = (process_tree_cpu(server_pid) - cpu0) / max(1, answered) * 1000
            results.append(result)
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second per route")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64, help="most requests in flight")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument(
        "--client",
        choices=["httpx", "aiohttp"],
        default="aiohttp",
        help="load generator's HTTP client (aiohttp costs the client less CPU)",
    )
    parser.add_argument("--policies-only", action="store_true", help="only /healthz and the policy routes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="facefleet-bench-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FACEFLEET_")}
        env.update(FACEFLEET_DATA_DIR=tmp, FACEFLEET_LOG_LEVEL="WARNING")
        token, policy_id = seed(env)
        port = free_port()
        server = start_server(env, port, args.workers)
        try:
            results = asyncio.run(bench(f"http://127.0.0.1:{port}", token, policy_id, server.pid, args))
        finally:
            server.terminate()
            server.wait(timeout=10)
    print_table(results, args)


def print_table(results: list[Result], args: argparse.Namespace) -> None:
    base = results[0]
    print(
        f"\nfacefleet API on loopback: uvicorn ({args.workers} process(es)), SQLite, {args.rate:g} req/s "
        "for "
        f"{args.seconds:g} s"
        f" per route, at most {args.concurrency} in flight, {args.client} client\n"
    )
    print(
        f"{'route':44} {'ok':>6} {'err':>4} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'p50/base':>8} "
        f"{'p99/base':>8} {'server CPU ms':>13} {'CPU/base':>8}"
    )
    for r in results:
        print(
            f"{r.name:44} {len(r.latencies):6d} {r.errors:4d} {r.throughput:7.1f} {r.pct(0.5):7.2f} "
            f"{r.pct(0.99):7.2f} {r.pct(0.5) / base.pct(0.5):8.2f} {r.pct(0.99) / base.pct(0.99):8.2f} "
            f"{r.server_cpu_ms:13.2f} {r.server_cpu_ms / base.server_cpu_ms:8.2f}"
        )
    worst = max((r for r in results if "(read" in r.name), key=lambda r: r.pct(0.99))
    verdict = "met" if worst.pct(0.99) < 50 else "MISSED"
    print(
        f"\nworst read p99 {worst.pct(0.99):.1f} ms ({worst.name}): target < 50 ms {verdict}; "
        f"its mean latency {statistics.mean(worst.latencies) * 1000:.2f} ms"
    )


if __name__ == "__main__":
    main()
