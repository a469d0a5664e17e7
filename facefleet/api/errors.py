"""One place that turns every rejection into problem JSON ``{type, title, status, detail, field}``."""

from __future__ import annotations

import logging
import traceback
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from facefleet.platform.errors import FacefleetError
from facefleet.platform.store.base import InvalidKeyError, ObjectNotFoundError

log = logging.getLogger("facefleet.api")

PROBLEM_BASE = "https://facefleet.dev/problems/"
DATABASE_RETRY_AFTER_SECONDS = 2  # PostgreSQL restarts (fast shutdown + start) take about a second
_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Payload too large",
    422: "Invalid input",
    500: "Internal server error",
    503: "Service unavailable",
}


class Problem(BaseModel):
    """The body of every error response (RFC 9457 style, plus the offending field)."""

    type: str
    title: str
    status: int
    detail: str
    field: str | None = None
    errors: list[dict[str, Any]] | None = None
    report: dict[str, Any] | None = None


def problem_response(
    status: int,
    detail: str,
    *,
    field: str | None = None,
    title: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    report: dict[str, Any] | None = None,
) -> JSONResponse:
    title = title or _TITLES.get(status, "Error")
    body = Problem(
        type=PROBLEM_BASE + title.lower().replace(" ", "-"),
        title=title,
        status=status,
        detail=detail,
        field=field,
        errors=errors,
        report=report,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        headers=headers,
        media_type="application/problem+json",
    )


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    """('body', 'config', 'lr') -> 'config.lr'; ('query', 'limit') -> 'limit'."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie", "form"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def _fix_hint(error: dict[str, Any]) -> str:
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return "remove this field (unknown fields are rejected)"
    if kind == "missing":
        return "add this required field"
    return "send a value of the documented type"


async def _validation_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for err in exc.errors():
        field = _location(err.get("loc", ()))
        errors.append({"field": field, "message": str(err.get("msg", "")), "fix": _fix_hint(err)})
    first = errors[0] if errors else {"field": "body", "message": "invalid request", "fix": ""}
    detail = f"{first['field']}: {first['message']} ({first['fix']})"
    if len(errors) > 1:
        detail += f"; and {len(errors) - 1} more problem(s), see 'errors'"
    return problem_response(422, detail, field=first["field"], errors=errors)


async def _facefleet_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FacefleetError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    field = exc.field
    if field is None and exc.status_code in (404, 409) and request.path_params:
        # A service that did not name the field was looking up (or changing) what the path names.
        field = list(request.path_params)[-1]
    return problem_response(
        exc.status_code, exc.message, field=field, title=type(exc).title, headers=headers, report=exc.report
    )


async def _http_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route {request.method} {request.url.path}; see /docs for the API"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}; see /docs for the allowed methods"
    return problem_response(exc.status_code, detail, headers=getattr(exc, "headers", None))


async def _store_handler(_request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, ObjectNotFoundError):
        return problem_response(404, f"object not found in the store: {exc}")
    return problem_response(422, str(exc), field="key")


def _short(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


async def _integrity_handler(_request: Request, exc: Exception) -> JSONResponse:
    # A unique or foreign-key constraint caught a race the service's own checks could not see.
    log.info("integrity error: %s", _short(str(exc)))
    return problem_response(
        409,
        "the change conflicts with existing data "
        "(a name or reference already exists "
        "or is in use); reload and retry",
    )


async def _data_error_handler(request: Request, exc: Exception) -> JSONResponse:
    # The database refused a value its column cannot hold (a number out of range, a NUL character in
    # text on PostgreSQL) that the request's validation let through; nothing was written.
    log.warning(
        "database refused a value on %s %s: %s", request.method, _short(request.url.path), _short(str(exc))
    )
    return problem_response(
        422,
        "a value in the request cannot be stored (a number out of range or a "
        "control character in text); fix the value and retry",
    )


async def _database_down_handler(request: Request, exc: Exception) -> JSONResponse:
    # The database is down, restarting or dropped this connection (SQLAlchemy marks the pooled connection
    # invalid, so the next request gets a fresh one): the client may retry; the API itself needs no restart.
    dropped = isinstance(exc, DBAPIError) and exc.connection_invalidated
    if not isinstance(exc, OperationalError) and not dropped:
        return await _unhandled_handler(request, exc)
    log.error("database unavailable on %s %s: %s", request.method, _short(request.url.path), _short(str(exc)))
    return problem_response(
        503,
        "the database is unavailable; retry shortly (this request's changes were not confirmed)",
        title="Service unavailable",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )


async def _unhandled_handler(request: Request, exc: Exception) -> JSONResponse:
    # The client learns only that it was our fault; the traceback goes to the log, never the body.
    # Each line is cut: an exception can quote a huge input (a 10 MB path) that must not flood the log.
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    log.error(
        "unhandled error on %s %s\n%s",
        request.method,
        _short(request.url.path),
        "".join(_short(line, 2000) for line in lines),
    )
    return problem_response(500, "internal error; the server logged the details (nothing was changed)")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(FacefleetError, _facefleet_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(ObjectNotFoundError, _store_handler)
    app.add_exception_handler(InvalidKeyError, _store_handler)
    app.add_exception_handler(IntegrityError, _integrity_handler)
    app.add_exception_handler(DataError, _data_error_handler)
    app.add_exception_handler(OperationalError, _database_down_handler)
    app.add_exception_handler(DBAPIError, _database_down_handler)  # disconnects seen as InterfaceError etc.
    app.add_exception_handler(Exception, _unhandled_handler)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "description": _TITLES[code]} for code in (401, 403, 404, 409, 422, 503)
}
