"""What every console page shares: templates, the signed-in key, CSRF checks, redirects and errors."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from facefleet import __version__
from facefleet.api.deps import (
    DbSession,
    Principal,
    console_principal,
    console_secret,
    console_session_of,
)
from facefleet.ui import session as console_session

CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class LoginRequired(Exception):
    """Raised by page dependencies without a valid session: the handler redirects to the sign-in page."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class ConsoleForbidden(Exception):
    """A write from a viewer key, or a form post without a valid CSRF token."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _when(value: datetime | None) -> str:
    if value is None:
        return "—"
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _number(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return (
            f"{value:.{digits}g}"
            if abs(value) < 1e-3 and value
            else f"{value:.{digits}f}".rstrip("0").rstrip(".")
        )
    return str(value)


templates = Environment(
    loader=PackageLoader("facefleet.ui", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters["when"] = _when
templates.filters["num"] = _number
templates.filters["tojson_pretty"] = lambda value: json.dumps(value, indent=2, sort_keys=True, default=str)
templates.globals["version"] = __version__


class Console:
    """The signed-in key of a console request, with what templates need to show it."""

    def __init__(self, request: Request, principal: Principal, csrf: str) -> None:
        self.request = request
        self.principal = principal
        self.csrf = csrf

    @property
    def can_write(self) -> bool:
        return self.principal.is_admin

    def render(self, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        return render(
            self.request,
            template,
            status_code=status_code,
            console=self,
            notice=self.request.query_params.get("notice"),
            error=self.request.query_params.get("error"),
            **context,
        )


def render(request: Request, template: str, *, status_code: int = 200, **context: Any) -> HTMLResponse:
    html = templates.get_template(template).render(request=request, **context)
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


async def current_console(request: Request, session: DbSession) -> Console:
    """Any signed-in key; without a session, a redirect to the sign-in page (see ``LoginRequired``)."""
    principal = await run_in_threadpool(console_principal, request, session)
    signed_in = console_session_of(request)
    if principal is None or signed_in is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(target)
    if principal.role == "inspector":
        raise ConsoleForbidden(
            f"API key {principal.name!r} has role 'inspector': it may only list and label attempts "
            "through /v1/inspections or `facefleet inspections`"
        )
    return Console(request, principal, console_session.csrf_token(console_secret(request), signed_in))


async def posting_console(
    console: Annotated[Console, Depends(current_console)], csrf: Annotated[str, Form(max_length=128)] = ""
) -> Console:
    """A form post from any signed-in key: the CSRF token must match the session."""
    signed_in = console_session_of(console.request)
    if signed_in is None or not console_session.csrf_ok(console_secret(console.request), signed_in, csrf):
        raise ConsoleForbidden("the form expired or did not come from this console; reload and retry")
    return console


async def writing_console(console: Annotated[Console, Depends(posting_console)]) -> Console:
    """A change: a CSRF-checked form post from an admin key (viewers are refused whatever they send)."""
    if not console.can_write:
        raise ConsoleForbidden(
            f"API key {console.principal.name!r} has role 'viewer', which is read-only; sign in with an "
            "admin key to change anything"
        )
    return console


ConsoleUser = Annotated[Console, Depends(current_console)]
ConsolePoster = Annotated[Console, Depends(posting_console)]
ConsoleWriter = Annotated[Console, Depends(writing_console)]


def back(path: str, *, notice: str | None = None, error: str | None = None) -> RedirectResponse:
    """Post/redirect/get: back to ``path`` with a one-line notice or error shown in a banner."""
    params = {key: value for key, value in (("notice", notice), ("error", error)) if value}
    url = path + ("?" + urlencode(params) if params else "")
    return RedirectResponse(url, status_code=303)


def login_redirect(next_path: str) -> RedirectResponse:
    return RedirectResponse(f"/ui/login?next={quote(next_path, safe='')}", status_code=303)


def safe_next(value: str | None) -> str:
    """Only same-site console paths are followed after sign-in (no open redirect)."""
    if value and value.startswith("/ui/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/ui/runs"


def forbidden_page(request: Request, message: str) -> Response:
    return render(request, "error.html", status_code=403, title="Not allowed", message=message, console=None)
