"""Mount the web console on the API app: its pages, static files and HTML error pages under /ui."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from facefleet.platform.errors import FacefleetError
from facefleet.ui.pages import admin, datasets, fleet, models, runs, signin
from facefleet.ui.web import ConsoleForbidden, LoginRequired, forbidden_page, login_redirect, render

ERROR_TITLES = {
    400: "Bad request",
    401: "Sign in again",
    403: "Not allowed",
    404: "Not found",
    409: "Conflict",
}


def _is_console(request: Request) -> bool:
    return request.url.path == "/ui" or request.url.path.startswith("/ui/")


def _message(exc: Exception) -> tuple[int, str]:
    if isinstance(exc, FacefleetError):
        return exc.status_code, exc.message
    if isinstance(exc, RequestValidationError):
        parts = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ())[1:]) or "input"
            parts.append(f"{where}: {error.get('msg', 'invalid')}")
        return 422, "; ".join(parts) or "invalid input"
    if isinstance(exc, StarletteHTTPException):
        detail = str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = "there is no console page at this address"
        return exc.status_code, detail
    return 500, "internal error"


def install_console(app: FastAPI) -> None:
    """Add the console's routes, and make errors under /ui HTML pages (the API keeps problem JSON)."""
    for module in (signin, datasets, runs, models, fleet, admin):
        app.include_router(module.router)
    app.mount("/ui/static", StaticFiles(packages=[("facefleet.ui", "static")]), name="console-static")

    async def login_required(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoginRequired)
        return login_redirect(exc.next_path)

    async def forbidden(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ConsoleForbidden)
        return forbidden_page(request, exc.message)

    app.add_exception_handler(LoginRequired, login_required)
    app.add_exception_handler(ConsoleForbidden, forbidden)
    for kind in (FacefleetError, RequestValidationError, StarletteHTTPException):
        api_handler = app.exception_handlers[kind]

        async def handler(request: Request, exc: Exception, _api_handler=api_handler) -> Response:  # type: ignore[no-untyped-def]
            if not _is_console(request):
                return await _api_handler(request, exc)
            status, message = _message(exc)
            return render(
                request,
                "error.html",
                status_code=status,
                title=ERROR_TITLES.get(status, "Cannot show this page"),
                message=message,
                console=None,
            )

        app.add_exception_handler(kind, handler)
