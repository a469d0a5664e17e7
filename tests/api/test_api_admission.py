"""Admission control: past the in-flight limit requests wait briefly, then get 503 + Retry-After at once."""

from __future__ import annotations

import asyncio
import json

from starlette.types import Message, Receive, Scope, Send

from facefleet.api.admission import AdmissionMiddleware
from facefleet.api.app import create_app
from facefleet.platform.settings import Settings


def scope(path: str = "/v1/runs") -> Scope:
    return {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}


class SlowApp:
    """An app whose requests finish only when the test says so."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.entered += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def call(app: AdmissionMiddleware, path: str = "/v1/runs") -> tuple[int, dict[str, str], bytes]:
    messages: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        messages.append(message)

    await app(scope(path), receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return start["status"], headers, body


def test_full_queue_is_refused_at_once_and_a_long_wait_times_out() -> None:
    async def scenario() -> None:
        inner = SlowApp()
        gate = AdmissionMiddleware(inner, limit=1, max_queue=1, max_wait=0.2)
        holder = asyncio.create_task(call(gate))  # takes the only slot
        await asyncio.sleep(0.01)
        waiter = asyncio.create_task(call(gate))  # waits (queue of 1)
        await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        started = loop.time()
        status, headers, body = await call(gate)  # the queue is full: refused without waiting
        assert loop.time() - started < 0.1
        assert status == 503 and headers["retry-after"] == "1"
        assert headers["content-type"] == "application/problem+json"
        problem = json.loads(body)
        assert problem["status"] == 503 and "retry after" in problem["detail"]
        # The waiter gives up after max_wait: 503 as well, and the slot holder is untouched.
        status, headers, _ = await waiter
        assert status == 503 and "retry-after" in headers
        assert loop.time() - started >= 0.15
        inner.release.set()
        assert (await holder)[0] == 200
        # Capacity is back: the next request goes straight through.
        assert (await call(gate))[0] == 200
        assert gate.rejected == 2 and inner.entered == 2

    asyncio.run(scenario())


def test_a_waiter_gets_the_slot_when_it_frees_in_time() -> None:
    async def scenario() -> None:
        inner = SlowApp()
        gate = AdmissionMiddleware(inner, limit=1, max_queue=4, max_wait=2.0)
        holder = asyncio.create_task(call(gate))
        await asyncio.sleep(0.01)
        waiter = asyncio.create_task(call(gate))
        await asyncio.sleep(0.05)
        inner.release.set()
        assert (await holder)[0] == 200 and (await waiter)[0] == 200
        assert gate.rejected == 0

    asyncio.run(scenario())


def test_health_is_never_gated() -> None:
    async def scenario() -> None:
        inner = SlowApp()
        gate = AdmissionMiddleware(inner, limit=1, max_queue=0, max_wait=0.01)
        holder = asyncio.create_task(call(gate))  # the only slot is taken
        await asyncio.sleep(0.01)
        assert (await call(gate))[0] == 503
        probe = asyncio.create_task(call(gate, "/healthz"))  # not refused, not queued
        await asyncio.sleep(0.01)
        inner.release.set()
        assert (await probe)[0] == 200 and (await holder)[0] == 200

    asyncio.run(scenario())


def test_the_app_takes_queue_and_wait_from_settings() -> None:
    app = create_app(Settings(api_max_queue=7, api_max_wait_seconds=0.25))
    entry = next(m for m in app.user_middleware if m.cls is AdmissionMiddleware)
    assert entry.kwargs["max_queue"] == 7 and entry.kwargs["max_wait"] == 0.25
