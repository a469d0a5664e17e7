"""Request dependencies: the request-owned DB session, the store, and who is calling (API keys)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from facefleet.platform import auth
from facefleet.platform.db.models import ApiKey
from facefleet.platform.db.session import commit_and_close, rollback_and_close
from facefleet.platform.errors import AuthenticationError, PermissionDeniedError
from facefleet.platform.store import ObjectStore
from facefleet.ui import session as console_session

T = TypeVar("T")

DEVICE_ONLY_MESSAGE = (
    "device credentials are accepted only on /v1/device routes; use an API key (ffk_...) here"
)


async def get_db_session(request: Request) -> AsyncIterator[Session]:
    """The request owns the transaction: commit when the handler succeeds, roll back when it raises.

    An async generator so that opening the session costs no thread hop; commit/rollback and close are
    blocking I/O and run together in one worker thread.
    """
    session: Session = request.app.state.session_factory()
    try:
        yield session
    except BaseException:
        await run_in_threadpool(rollback_and_close, session)
        raise
    await run_in_threadpool(commit_and_close, session)


def _unit_of_work(factory: Callable[[], Session], use_case: Callable[..., T], args: Any, kwargs: Any) -> T:
    session = factory()
    try:
        result = use_case(session, *args, **kwargs)
    except BaseException:
        rollback_and_close(session)
        raise
    commit_and_close(session)
    return result


async def in_transaction(request: Request, use_case: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``use_case(session, ...)`` and its commit in ONE worker-thread hop (what ``DbSession`` does in two).

    The same rule as ``get_db_session``: committed before the response is sent, rolled back when it raises
    (the exception handlers then render the error).
    """
    return await run_in_threadpool(_unit_of_work, request.app.state.session_factory, use_case, args, kwargs)


def _read(engine: Engine, read: Callable[..., T], args: Any, kwargs: Any) -> T:
    with engine.connect() as conn:
        return read(conn, *args, **kwargs)


async def read_only(request: Request, read: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``read(connection, ...)`` in ONE worker-thread hop, for a single SELECT (or statements that cannot
    disagree with each other: each sees what was committed when it ran).

    The connection is the app's autocommit one on PostgreSQL (a single statement needs no BEGIN/COMMIT
    round trips); SQLite's driver starts no transaction for a SELECT anyway.
    """
    return await run_in_threadpool(_read, request.app.state.autocommit_engine, read, args, kwargs)


async def read_snapshot(request: Request, read: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Like ``read_only`` for reads of several statements: one transaction, so they see one snapshot."""
    return await run_in_threadpool(_read, request.app.state.engine, read, args, kwargs)


# scope="function": the commit runs before the response is sent, so a failed commit is reported to the
# client and a client never reads its own write before it is committed.
DbSession = Annotated[Session, Depends(get_db_session, scope="function")]


def get_object_store(request: Request) -> ObjectStore:
    store: ObjectStore = request.app.state.store
    return store


Store = Annotated[ObjectStore, Depends(get_object_store)]


@dataclass(frozen=True)
class Principal:
    """Who sent a request: an API key with its role."""

    key_id: int
    name: str
    role: str

    @property
    def actor(self) -> str:
        """How the audit log names this caller."""
        return f"key:{self.key_id}:{self.name}"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def bearer_token(request: Request) -> str | None:
    """The token from ``Authorization: Bearer <token>`` or ``X-API-Key``."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError("Authorization header must be 'Bearer <key>'", field="Authorization")
        return token.strip()
    return request.headers.get("x-api-key") or None


async def require_key(request: Request) -> Principal:
    """Any valid API key, whatever its role. 401 without one; 403 for device credentials.

    The key is looked up in its own short transaction (one worker-thread hop, only when the principal cache
    misses), not in the request's: a read then needs no session at all, and the key's ``last_used_at``
    bookkeeping does not wait for the request's own work.
    """
    token = bearer_token(request)
    factory: Callable[[], Session] = request.app.state.session_factory
    if not token and request.method in SAFE_METHODS:
        # The web console's scripts read the API with the session cookie (SameSite=Strict); writes
        # through /v1 always need the key itself.
        principal = await run_in_threadpool(_unit_of_work, factory, _console_principal, (request,), {})
        if principal is not None:
            request.state.principal = principal
            return principal
    if not token:
        raise AuthenticationError(
            "no API key: send 'Authorization: Bearer ffk_...' (create one with `facefleet keys create`)",
            field="Authorization",
        )
    if token.startswith(auth.DEVICE_TOKEN_PREFIX):
        raise PermissionDeniedError(DEVICE_ONLY_MESSAGE, field="Authorization")
    cache: PrincipalCache = request.app.state.principal_cache
    digest = auth.hash_token(token)
    principal = cache.get(digest)
    if principal is None:
        principal = await run_in_threadpool(_unit_of_work, factory, _authenticate, (token,), {})
        cache.put(digest, principal)
    request.state.principal = principal
    return principal


INSPECTOR_ONLY_MESSAGE = (
    "API key {name!r} has role 'inspector', which may only list and label attempts "
    "(/v1/inspections); this request needs an admin or viewer key"
)


# The role checks below call require_key themselves instead of depending on it: each route then solves one
# async dependency, not a chain of them (the sync ones even cost a worker-thread hop each).
async def require_viewer(request: Request) -> Principal:
    """An admin or viewer key; an inspector key gets 403 everywhere but /v1/inspections."""
    principal = await require_key(request)
    if principal.role == "inspector":
        raise PermissionDeniedError(INSPECTOR_ONLY_MESSAGE.format(name=principal.name), field="Authorization")
    return principal


async def require_inspector(request: Request) -> Principal:
    """An inspector or admin key (attempts hold faces: viewers do not see them)."""
    principal = await require_key(request)
    if principal.role not in ("inspector", "admin"):
        raise PermissionDeniedError(
            f"API key {principal.name!r} has role {principal.role!r}; listing and labelling attempts "
            "needs an inspector or admin key",
            field="Authorization",
        )
    return principal


SAFE_METHODS = frozenset({"GET", "HEAD"})


def console_secret(request: Request) -> bytes:
    """The app's session secret, derived once per process."""
    secret: bytes | None = getattr(request.app.state, "session_secret", None)
    if secret is None:
        secret = console_session.session_secret(request.app.state.settings)
        request.app.state.session_secret = secret
    return secret


def console_session_of(request: Request) -> console_session.ConsoleSession | None:
    value = request.cookies.get(console_session.COOKIE_NAME)
    if not value:
        return None
    return console_session.read(console_secret(request), value)


def _authenticate(session: Session, token: str) -> Principal:
    key = auth.authenticate(session, token)
    return Principal(key_id=key.id, name=key.name, role=key.role)


def _console_principal(session: Session, request: Request) -> Principal | None:
    return console_principal(request, session)


def console_principal(request: Request, session: Session) -> Principal | None:
    """The key behind a valid console cookie, if that key still exists, matches and is not revoked."""
    signed_in = console_session_of(request)
    if signed_in is None:
        return None
    key = session.get(ApiKey, signed_in.key_id)
    if (
        key is None
        or key.revoked_at is not None
        or console_session.key_fingerprint(key.key_hash) != signed_in.fingerprint
    ):
        return None
    return Principal(key_id=key.id, name=key.name, role=key.role)


class PrincipalCache:
    """Authenticated keys for a few seconds, so most requests skip the key lookup.

    Revoking through this process clears the cache at once; another API process notices within ``ttl``.
    """

    def __init__(self, ttl_seconds: float = 5.0, max_entries: int = 1024) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Principal]] = {}

    def get(self, digest: str) -> Principal | None:
        entry = self._entries.get(digest)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, digest: str, principal: Principal) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[digest] = (time.monotonic() + self.ttl, principal)

    def clear(self) -> None:
        self._entries.clear()


async def require_admin(request: Request) -> Principal:
    """An admin key; a viewer key gets 403 saying why (an inspector key: the viewer's 403)."""
    principal = await require_viewer(request)
    if not principal.is_admin:
        raise PermissionDeniedError(
            f"API key {principal.name!r} has role 'viewer', which is read-only; "
            "this request needs an admin key",
            field="Authorization",
        )
    return principal


Viewer = Annotated[Principal, Depends(require_viewer)]
Inspector = Annotated[Principal, Depends(require_inspector)]
Admin = Annotated[Principal, Depends(require_admin)]
