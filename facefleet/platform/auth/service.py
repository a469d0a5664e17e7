"""API-key service: keys are random tokens prefixed ``ffk_``; only their SHA-256 hash is stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from facefleet.platform import audit
from facefleet.platform.db.models import ApiKey
from facefleet.platform.db.paging import fetch_page
from facefleet.platform.errors import AuthenticationError, InvalidInputError, NotFoundError
from facefleet.platform.names import check_name

API_KEY_PREFIX = "ffk_"
DEVICE_TOKEN_PREFIX = "ffd_"
ROLES = ("admin", "viewer", "inspector")  # inspector: list and label attempts only
# Writing last_used_at on every request would turn each read into a write; once a minute is enough.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_token(token: str) -> str:
    """Hex SHA-256 of a token: keys are long random strings, so a fast hash is enough (no password KDF)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_api_key(session: Session, *, name: str, role: str) -> tuple[ApiKey, str]:
    """Create a key; return the row and the plaintext token, which is never stored and shown only once."""
    if role not in ROLES:
        raise InvalidInputError(f"role {role!r} is unknown; use one of {', '.join(ROLES)}", field="role")
    check_name(name, what="API key")
    token = API_KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(name=name, role=role, prefix=token[:12], key_hash=hash_token(token))
    session.add(key)
    session.flush()
    return key, token


def authenticate(session: Session, token: str) -> ApiKey:
    """The active key for ``token``; AuthenticationError when it is unknown or revoked."""
    if not token.startswith(API_KEY_PREFIX):
        raise AuthenticationError(
            f"this is not a facefleet API key (keys start with {API_KEY_PREFIX!r}); "
            "create one with `facefleet keys create --role admin --name NAME`",
            field="Authorization",
        )
    digest = hash_token(token)
    key = session.scalars(select(ApiKey).where(ApiKey.key_hash == digest)).one_or_none()
    # compare_digest guards the (already hashed) comparison against timing differences anyway.
    if key is None or not hmac.compare_digest(key.key_hash, digest):
        raise AuthenticationError(
            "unknown API key; check FACEFLEET_API_KEY or create a new key", field="Authorization"
        )
    if key.revoked_at is not None:
        raise AuthenticationError(
            f"API key {key.name!r} was revoked; create a new key", field="Authorization"
        )
    now = datetime.now(timezone.utc)
    last = key.last_used_at
    if last is not None and last.tzinfo is None:
        last = last.replace(tzinfo=timezone.utc)
    if last is None or now - last > LAST_USED_RESOLUTION:
        key.last_used_at = now
    return key


def list_api_keys(
    session: Session, *, limit: int, offset: int, include_revoked: bool = True
) -> tuple[list[ApiKey], int | None]:
    """A page of keys (newest first) and the total count."""
    stmt = select(ApiKey)
    if not include_revoked:
        stmt = stmt.where(ApiKey.revoked_at.is_(None))
    return fetch_page(session, stmt.order_by(ApiKey.id.desc()), limit=limit, offset=offset)


def get_api_key(session: Session, *, key_id: int) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFoundError(f"API key {key_id} does not exist; list keys with GET /v1/keys", field="key_id")
    return key


def revoke_api_key(session: Session, *, key_id: int) -> ApiKey:
    """Revoke a key (idempotent): it stops authenticating at once."""
    key = get_api_key(session, key_id=key_id)
    if key.revoked_at is None:
        key.revoked_at = datetime.now(timezone.utc)
    return key


def create_api_key_audited(session: Session, *, name: str, role: str, actor: str) -> tuple[ApiKey, str]:
    """``create_api_key`` and its audit event (the API and the CLI's local mode both call this)."""
    key, token = create_api_key(session, name=name, role=role)
    audit.record(session, actor, "keys.create", "api_key", key.id, {"name": key.name, "role": key.role})
    return key, token


def revoke_api_key_audited(session: Session, *, key_id: int, actor: str) -> ApiKey:
    """``revoke_api_key`` and its audit event."""
    key = revoke_api_key(session, key_id=key_id)
    audit.record(session, actor, "keys.revoke", "api_key", key.id, {"name": key.name})
    return key
