"""Sign in with an API key (exchanged for a session cookie), sign out, and the redirects into the console."""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from facefleet.api.deps import DbSession, console_secret
from facefleet.platform import audit, auth
from facefleet.platform.errors import AuthenticationError
from facefleet.ui import session as console_session
from facefleet.ui.web import ConsolePoster, render, safe_next

router = APIRouter(include_in_schema=False)


def _secure(request: Request) -> bool:
    """Secure cookies over TLS, also behind a proxy that terminates it (FACEFLEET_PUBLIC_URL is https)."""
    public_url = str(request.app.state.settings.public_url)
    return request.url.scheme == "https" or public_url.startswith("https://")


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=307)


@router.get("/ui")
@router.get("/ui/")
def console_home() -> RedirectResponse:
    return RedirectResponse("/ui/runs", status_code=307)


def _login_page(request: Request, *, next_path: str, error: str | None, status_code: int = 200) -> Response:
    token = secrets.token_urlsafe(24)
    response = render(
        request,
        "login.html",
        status_code=status_code,
        console=None,
        login_csrf=token,
        next_path=next_path,
        error=error,
        title="Sign in",
    )
    response.set_cookie(
        console_session.LOGIN_CSRF_COOKIE,
        token,
        max_age=1800,
        path="/ui/login",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    return response


@router.get("/ui/login")
def login_form(request: Request, next: str | None = None) -> Response:  # noqa: A002 - the query name
    return _login_page(request, next_path=safe_next(next), error=None)


@router.post("/ui/login")
async def login(
    request: Request,
    session: DbSession,
    api_key: Annotated[str, Form(max_length=512)] = "",
    csrf: Annotated[str, Form(max_length=128)] = "",
    next: Annotated[str, Form(max_length=2048)] = "/ui/runs",  # noqa: A002 - the form field's name
) -> Response:
    expected = request.cookies.get(console_session.LOGIN_CSRF_COOKIE, "")
    next_path = safe_next(next)
    if not expected or not hmac.compare_digest(expected, csrf):
        return _login_page(
            request, next_path=next_path, error="the sign-in form expired; try again", status_code=403
        )
    token = api_key.strip()
    if not token:
        return _login_page(request, next_path=next_path, error="enter an API key (ffk_...)", status_code=422)
    if token.startswith(auth.DEVICE_TOKEN_PREFIX):
        return _login_page(
            request,
            next_path=next_path,
            error="that is a device credential; sign in with an API key (ffk_...)",
            status_code=403,
        )
    try:
        key = await run_in_threadpool(auth.authenticate, session, token)
    except AuthenticationError as exc:
        return _login_page(request, next_path=next_path, error=exc.message, status_code=401)
    audit.record(session, f"key:{key.id}:{key.name}", "console.sign_in", "api_key", key.id)
    settings = request.app.state.settings
    lifetime = float(settings.session_hours) * 3600
    value = console_session.issue(
        console_secret(request), key_id=key.id, key_hash=key.key_hash, lifetime_seconds=lifetime
    )
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(
        console_session.COOKIE_NAME,
        value,
        max_age=int(lifetime),
        path="/",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    response.delete_cookie(console_session.LOGIN_CSRF_COOKIE, path="/ui/login")
    return response


@router.post("/ui/logout")
def logout(_console: ConsolePoster) -> Response:
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(console_session.COOKIE_NAME, path="/", httponly=True, samesite="strict")
    return response
