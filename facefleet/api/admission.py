"""Admission control: at most as many requests use the database at once as the connection pool holds.

Why: handlers and their dependencies are sync functions in AnyIO's thread pool (40 threads) while the
engine's pool holds fewer connections (15 by default). Under load, threads that wait for a connection can
starve requests that hold a connection and wait for a thread to finish, and everything stalls until the pool
times out (seen at 200 req/s). Waiting here, in the event loop before any thread or connection is taken,
cannot deadlock. A slot is released when the response starts: the request's transaction is over by then
(the session dependency exits before the response is sent), so long streamed downloads do not hold one.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import Engine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

EXEMPT_PATHS = frozenset({"/healthz"})


def pool_capacity(engine: Engine, default: int = 32) -> int:
    """Connections the engine's pool can hand out at once (QueuePool: size + overflow)."""
    pool = engine.pool
    size = getattr(pool, "size", None)
    overflow = getattr(pool, "_max_overflow", None)
    if callable(size) and isinstance(overflow, int) and overflow >= 0:
        return max(1, int(size()) + overflow)
    return default


class AdmissionMiddleware:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self._gate: asyncio.Semaphore | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        if self._gate is None:  # created lazily inside the server's event loop
            self._gate = asyncio.Semaphore(self.limit)
        gate = self._gate
        await gate.acquire()
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
