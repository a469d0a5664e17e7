"""A cheap open-loop HTTP/1.1 load generator for bench/fleet.py: raw asyncio streams, keep-alive, pre-built
request bytes, requests started by the event loop's timers at their due time.

httpx cost the load generator 4-6 ms of CPU per request, more than the server it measured, so on 2 cores the
benchmark measured its own client. Here a request is a ``bytes`` object built once (rebuilt only when its
headers change, e.g. a new ETag), written to one of ``connections`` kept-alive sockets by whichever is free;
the response is parsed just enough (status, Content-Length, ETag; the body only when the caller wants it).
Latency counts from when the request was **due**, not from when a connection became free: a server that
falls behind shows it in the latencies instead of slowing the schedule down (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Route:
    latencies: list[float] = field(default_factory=list)
    dues: list[float] = field(default_factory=list)  # when each of ``latencies`` was due
    errors: int = 0
    rejected: int = 0  # 503 (admission control): counted apart from other errors

    def pct(self, q: float) -> float:
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(q * len(data)))] * 1000 if data else float("nan")

    def between(self, start: float, end: float) -> Route:
        """The requests that were due in [start, end)."""
        part = Route()
        for due, latency in zip(self.dues, self.latencies, strict=True):
            if start <= due < end:
                part.latencies.append(latency)
                part.dues.append(due)
        return part


class Recorder:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}

    def add(self, name: str, due: float, status: int | None, now: float | None = None) -> None:
        route = self.routes.get(name)
        if route is None:
            route = self.routes[name] = Route()
        if status is None or (status >= 400 and status != 503):
            route.errors += 1
        elif status == 503:
            route.rejected += 1
        else:
            route.latencies.append((now or time.perf_counter()) - due)
            route.dues.append(due)


@dataclass(frozen=True)
class Reply:
    status: int
    etag: str | None
    body: bytes


def build_request(method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    """The bytes of one HTTP/1.1 keep-alive request."""
    lines = [f"{method} {path} HTTP/1.1", "Host: bench"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    etag = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        lower = name.lower()
        if lower == b"content-length":
            length = int(value)
        elif lower == b"etag":
            etag = value.strip().decode()
        elif lower == b"transfer-encoding" and b"chunked" in value.lower():
            return Reply(status, etag, await _read_chunked(reader))
    body = await reader.readexactly(length) if length else b""
    return Reply(status, etag, body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


Done = Callable[[Reply | None], None]


@dataclass
class Job:
    due: float  # time.perf_counter() when the request should be sent
    name: str  # the route's row in the table
    raw: bytes
    done: Done | None = None


class LoadClient:
    """``connections`` kept-alive sockets to ``host:port`` taking due requests from one queue."""

    def __init__(self, host: str, port: int, recorder: Recorder, connections: int = 64) -> None:
        self.host, self.port = host, port
        self.recorder = recorder
        self.connections = connections
        self.queue: asyncio.Queue[Job | None] = asyncio.Queue()
        self.outstanding = 0  # scheduled or in flight
        self.sent = 0
        self.idle = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._workers = [asyncio.create_task(self._worker()) for _ in range(self.connections)]

    def submit(self, job: Job) -> None:
        """Send ``job`` at its due time (at once when it is due already)."""
        self.outstanding += 1
        self.idle.clear()
        delay = job.due - time.perf_counter()
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self.queue.put_nowait, job)
        else:
            self.queue.put_nowait(job)

    async def drain(self, timeout: float) -> int:
        """Wait until nothing is scheduled or in flight (at most ``timeout`` s); returns what was left."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.idle.wait(), timeout)
        return self.outstanding

    async def close(self) -> None:
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port, limit=1 << 20)

    async def _worker(self) -> None:
        reader, writer = await self._connect()
        try:
            while True:
                job = await self.queue.get()
                if job is None:
                    return
                reply: Reply | None = None
                try:
                    writer.write(job.raw)
                    reply = await read_reply(reader)
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                    writer.close()
                    reader, writer = await self._connect()
                self.sent += 1
                self.recorder.add(job.name, job.due, reply.status if reply else None)
                if job.done is not None:
                    job.done(reply)
                self.outstanding -= 1
                if self.outstanding == 0:
                    self.idle.set()
        finally:
            writer.close()


async def one_request(host: str, port: int, raw: bytes, timeout: float) -> Reply:
    """One request on its own connection (a long admin write that should not hold a pooled one)."""
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 24)
    try:
        writer.write(raw)
        return await asyncio.wait_for(read_reply(reader), timeout)
    finally:
        writer.close()
