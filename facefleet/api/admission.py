"""Admission control: a bounded number of requests use the database at once; the rest wait briefly or get 503.

Why a gate at all: handlers and their dependencies are sync functions in AnyIO's thread pool (40 threads)
while the engine's pool holds fewer connections. Under load, threads that wait for a connection can starve
requests that hold a connection and wait for a thread to finish, and everything stalls until the pool times
out. Waiting here, in the event loop before any thread or connection is taken, cannot deadlock.

Why bounded: an unbounded wait turns overload into seconds of queueing for everyone (measured: p50 5 s at
twice the sustainable rate). A request that finds ``max_queue`` others already waiting, or that waits longer
than ``max_wait`` seconds, is answered at once with 503 problem JSON and ``Retry-After``; terminals back off
and retry, admins see a clear message, and the requests that were admitted stay fast.

A slot is released when the response starts: the request's transaction is over by then (the session
dependency exits before the response is sent), so long streamed downloads do not hold one.
"""

from __future__ import annotations

import asyncio
import math

from sqlalchemy import Engine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facefleet.api.errors import problem_response

EXEMPT_PATHS = frozenset({"/healthz"})


def pool_capacity(engine: Engine, default: int = 32) -> int:
    """Requests that may use the database at once: the pool's kept connections (QueuePool: its size).

    Not size + overflow: an overflow connection is closed when it is returned while the pool is full, so
    admitting that many requests under steady load opened and closed a connection (a new PostgreSQL
    backend process) for a good share of requests. The overflow is left for what admission does not gate
    (readiness checks, the metrics collector, a request's rare second connection).
    """
    pool = engine.pool
    size = getattr(pool, "size", None)
    if callable(size):
        return max(1, int(size()))
    return default


class AdmissionMiddleware:
    """At most ``limit`` requests in flight, ``max_queue`` waiting, none waiting over ``max_wait`` s."""

    def __init__(self, app: ASGIApp, limit: int, max_queue: int = 64, max_wait: float = 0.5) -> None:
        self.app = app
        self.limit = limit
        self.max_queue = max_queue
        self.max_wait = max_wait
        self.waiting = 0
        self.rejected = 0
        self._gate: asyncio.Semaphore | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        if self._gate is None:  # created lazily inside the server's event loop
            self._gate = asyncio.Semaphore(self.limit)
        gate = self._gate
        if not await self._admit(gate):
            self.rejected += 1
            await self._reject(scope, receive, send)
            return
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                gate.release()

        async def send_and_release(message: Message) -> None:
            if message["type"] == "http.response.start":
                release()
            await send(message)

        try:
            await self.app(scope, receive, send_and_release)
        finally:
            release()

    async def _admit(self, gate: asyncio.Semaphore) -> bool:
        if not gate.locked():
            await gate.acquire()  # a free slot: returns without suspending
            return True
        if self.waiting >= self.max_queue:
            return False
        self.waiting += 1
        try:
            await asyncio.wait_for(gate.acquire(), timeout=self.max_wait)
            return True
        except TimeoutError:
            return False
        finally:
            self.waiting -= 1

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        retry_after = max(1, math.ceil(self.max_wait))
        response = problem_response(
            503,
            f"the server is at capacity ({self.limit} requests in progress, {self.waiting} waiting); "
            f"nothing was done, retry after {retry_after} s",
            title="Service unavailable",
            headers={"Retry-After": str(retry_after)},
        )
        await response(scope, receive, send)
