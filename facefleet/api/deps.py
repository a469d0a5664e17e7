"""Request dependencies: the request-owned DB session, the store, and who is calling (API keys)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from facefleet.platform import auth
from facefleet.platform.errors import AuthenticationError, PermissionDeniedError
from facefleet.platform.store import ObjectStore

DEVICE_ONLY_MESSAGE = (
    "device credentials are accepted only on /v1/device routes; use an API key (ffk_...) here"
)


def get_db_session(request: Request) -> Iterator[Session]:
    """The request owns the transaction: commit when the handler succeeds, roll back when it raises."""
    session: Session = request.app.state.session_factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


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


def require_viewer(request: Request, session: DbSession) -> Principal:
    """Any valid API key (admin or viewer). 401 without one; 403 for device credentials."""
    token = bearer_token(request)
    if not token:
        raise AuthenticationError(
            "no API key: send 'Authorization: Bearer ffk_...' (create one with `facefleet keys create`)",
            field="Authorization",
        )
    if token.startswith(auth.DEVICE_TOKEN_PREFIX):
        raise PermissionDeniedError(DEVICE_ONLY_MESSAGE, field="Authorization")
    key = auth.authenticate(session, token)
    principal = Principal(key_id=key.id, name=key.name, role=key.role)
    request.state.principal = principal
    return principal


def require_admin(principal: Annotated[Principal, Depends(require_viewer)]) -> Principal:
    """An admin key; a viewer key gets 403 saying why."""
    if not principal.is_admin:
        raise PermissionDeniedError(
            f"API key {principal.name!r} has role 'viewer', which is read-only; this request needs an admin key",
            field="Authorization",
        )
    return principal


Viewer = Annotated[Principal, Depends(require_viewer)]
Admin = Annotated[Principal, Depends(require_admin)]
