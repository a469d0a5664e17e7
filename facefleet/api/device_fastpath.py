"""Pure-ASGI fast path for the terminals' three hot routes: poll, heartbeat, status.

At 10,000 terminals these are ~500 requests/s, and FastAPI's per-request machinery (matching the path
against every router in turn, solving dependencies, parsing the body into a dict and validating it,
the exception middleware's bookkeeping) cost as much CPU as the SQL behind them. This middleware sits
inside admission control and the Prometheus middleware (so both still apply) and answers exactly
``GET /v1/device/assignment``, ``POST /v1/device/heartbeat`` and ``POST /v1/device/status`` itself,
calling the same functions as the FastAPI routes (``terminal_api.*_answer``).

It only ever answers **successes**. Anything else, whatever the reason (no or malformed credential, an
API key, a query string, a body that is not valid JSON for the route's model, an unknown or disabled
device, a refused transition, a database error), is handed to the FastAPI route unchanged, with the body
it already read, so every refusal is the route's own problem JSON: the route runs the same check again
and fails the same way. That is safe because a failing answer writes nothing (one statement, or one
transaction rolled back). The credential is verified against the database on every request either way.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facefleet.api.routes import terminal_api
from facefleet.platform.deployments.schemas import StatusReport
from facefleet.platform.devices.schemas import HeartbeatRequest
from facefleet.platform.devices.service import CREDENTIAL_PREFIX

log = logging.getLogger("facefleet.api.fastpath")
MAX_BODY = 64 * 1024  # a heartbeat or status report is well under 1 KiB; larger ones take the slow path
MAX_ETAG = 1024  # the route's If-None-Match limit

Answer = Callable[[Any, str, dict[bytes, bytes], bytes], Awaitable[Response | None]]


async def _poll(state: Any, token: str, headers: dict[bytes, bytes], _body: bytes) -> Response | None:
    raw = headers.get(b"if-none-match")
    if raw is not None and len(raw) > MAX_ETAG:
        return None
    return await terminal_api.assignment_answer(state, token, raw.decode("latin-1") if raw else None)


def _parsed(model: type[BaseModel], headers: dict[bytes, bytes], body: bytes) -> Any:
    content_type = headers.get(b"content-type", b"")
    if not content_type.startswith(b"application/json"):
        return None
    try:
        return model.model_validate_json(body)
    except ValidationError:
        return None


async def _heartbeat(state: Any, token: str, headers: dict[bytes, bytes], body: bytes) -> Response | None:
    parsed = _parsed(HeartbeatRequest, headers, body)
    return None if parsed is None else await terminal_api.heartbeat_answer(state, token, parsed)


async def _status(state: Any, token: str, headers: dict[bytes, bytes], body: bytes) -> Response | None:
    parsed = _parsed(StatusReport, headers, body)
    return None if parsed is None else await terminal_api.status_answer(state, token, parsed)


ROUTES: dict[tuple[str, str], Answer] = {
    ("GET", "/v1/device/assignment"): _poll,
    ("POST", "/v1/device/heartbeat"): _heartbeat,
    ("POST", "/v1/device/status"): _status,
}


def _route_objects() -> dict[str, BaseRoute]:
    """The FastAPI routes by path, so that metrics label fast answers with the same route template."""
    return {getattr(route, "path", ""): route for route in terminal_api.router.routes}


class DeviceFastPath:
    """Answers the hot device routes' successes directly; everything else goes to ``app`` untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.routes = _route_objects()
        self.fallbacks = 0  # requests handed to the FastAPI route after the fast path declined

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = (
            ROUTES.get((scope.get("method", ""), scope.get("path", ""))) if scope["type"] == "http" else None
        )
        if answer is None or scope.get("query_string"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization", b"")
        scheme, _, token_bytes = authorization.partition(b" ")
        token = token_bytes.strip().decode("latin-1")
        body, complete = (b"", True) if scope["method"] == "GET" else await _read_body(receive)
        response = None
        if complete and scheme.lower() == b"bearer" and token.startswith(CREDENTIAL_PREFIX):
            try:
                response = await answer(scope["app"].state, token, headers, body)
            except Exception:  # noqa: BLE001 - the route answers it again, as its own problem JSON
                log.debug("fast path declined %s %s", scope["method"], scope["path"], exc_info=True)
        if response is None:
            self.fallbacks += 1
            replay = receive if scope["method"] == "GET" else _replay(body, complete, receive)
            await self.app(scope, replay, send)
            return
        route = self.routes.get(scope["path"])
        if route is not None:
            scope["route"] = route
        await response(scope, receive, send)


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The request body, up to MAX_BODY bytes; (what was read, False) when it is larger."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True
        if size > MAX_BODY:
            return b"".join(chunks), False


def _replay(body: bytes, complete: bool, receive: Receive) -> Receive:
    """A ``receive`` that first hands over what the fast path already read, then the rest of the stream."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": not complete}]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay
