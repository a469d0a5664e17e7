"""Web-console sessions: a signed cookie (HMAC-SHA256) naming the API key, its fingerprint and an expiry.

Nothing is stored server-side: the cookie carries ``{key id, first 16 hex of the key's hash, expiry, nonce}``
and its MAC. A revoked key ends its sessions at once (the key row is checked on every request); a cookie
that is tampered with, expired or signed with another secret is ignored. The CSRF token of a session is a
MAC of its nonce, so every form post proves it was rendered for this cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization

from facefleet.platform.settings import Settings

COOKIE_NAME = "facefleet_session"
LOGIN_CSRF_COOKIE = "facefleet_login_csrf"
FINGERPRINT_CHARS = 16


@dataclass(frozen=True)
class ConsoleSession:
    key_id: int
    fingerprint: str
    expires_at: int
    nonce: str


def session_secret(settings: Settings) -> bytes:
    """``FACEFLEET_SESSION_SECRET``, else a key derived from the platform signing key (shared by replicas)."""
    if settings.session_secret is not None and settings.session_secret.get_secret_value():
        return hashlib.sha256(settings.session_secret.get_secret_value().encode("utf-8")).digest()
    from facefleet.platform.signing import platform_private_key

    raw = platform_private_key(settings).private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return hmac.new(raw, b"facefleet web console session v1", hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, label: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, label + b"\x00" + payload, hashlib.sha256).digest()


def key_fingerprint(key_hash: str) -> str:
    return key_hash[:FINGERPRINT_CHARS]


def issue(secret: bytes, *, key_id: int, key_hash: str, lifetime_seconds: float) -> str:
    """A new cookie value for the key ``key_id`` (fresh nonce, so a new CSRF token at every sign-in)."""
    payload = json.dumps(
        {
            "k": key_id,
            "f": key_fingerprint(key_hash),
            "e": int(time.time() + lifetime_seconds),
            "n": secrets.token_urlsafe(16),
        },
        separators=(",", ":"),
    ).encode("utf-8")
    return f"{_b64(payload)}.{_b64(_mac(secret, b'session', payload))}"


def read(secret: bytes, value: str | None, *, now: float | None = None) -> ConsoleSession | None:
    """The session in a cookie value, or None when it is missing, malformed, forged or expired."""
    if not value or value.count(".") != 1 or len(value) > 1024:
        return None
    body, mac = value.split(".")
    try:
        payload = _unb64(body)
        given = _unb64(mac)
    except (ValueError, TypeError):
        return None
    if not hmac.compare_digest(given, _mac(secret, b"session", payload)):
        return None
    try:
        data = json.loads(payload)
        session = ConsoleSession(int(data["k"]), str(data["f"]), int(data["e"]), str(data["n"]))
    except (ValueError, KeyError, TypeError):
        return None
    if session.expires_at <= (time.time() if now is None else now):
        return None
    return session


def csrf_token(secret: bytes, session: ConsoleSession) -> str:
    return _b64(_mac(secret, b"csrf", session.nonce.encode("utf-8")))


def csrf_ok(secret: bytes, session: ConsoleSession, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(str(token), csrf_token(secret, session))
