"""Why a run's job ended: a bounded, secret-free text for the run's ``error`` (shown by `runs show`/the API).

Job logs and status messages may carry secrets (a database URL with its password, S3 keys, tokens printed by
a library): every text that comes from a job goes through :func:`redact` before it is stored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from facefleet.platform.settings import Settings

MAX_ERROR_CHARS = 4000
LOG_TAIL_LINES = 30
LOG_TAIL_CHARS = 2500
MASK = "***"

# scheme://user:password@host -> scheme://user:***@host
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)(?P<secret>[^\s@/]+)(?=@)")
# NAME=value / "name": "value" / name: value for names that say they hold a secret
_SECRET_ASSIGNMENT = re.compile(
    r"(?P<head>(?i:[A-Za-z0-9_.-]*(?:password|passwd|secret|token|api[_-]?key|access[_-]?key|credential)"
    r"[A-Za-z0-9_.-]*)['\"]?\s*[:=]\s*['\"]?)(?P<secret>[^\s'\",;&}]+)"
)
_BEARER = re.compile(r"(?P<head>(?i:bearer)\s+)(?P<secret>[A-Za-z0-9._~+/=-]{8,})")
_AWS_ACCESS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")
_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.S
)


def settings_secrets(settings: Settings) -> list[str]:
    """Secret values this process knows (passwords in URLs, keys): replaced wherever they appear."""
    import os

    from sqlalchemy.engine import make_url

    found: list[str] = []
    for url in (settings.database_url, settings.store_url, settings.ray_address):
        if not url:
            continue
        try:
            password = make_url(url).password
        except Exception:  # noqa: BLE001 - not a SQLAlchemy URL; the URL pattern still masks it
            password = None
        if password:
            found.append(str(password))
    for secret in (settings.api_key, settings.webhook_secret, settings.ray_auth_token):
        if secret is not None and secret.get_secret_value():
            found.append(secret.get_secret_value())
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "RAY_AUTH_TOKEN"):
        if os.environ.get(name):
            found.append(os.environ[name])
    return found


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with known secret values and secret-looking fields masked."""
    for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _PRIVATE_KEY.sub(f"-----{MASK} PRIVATE KEY-----", text)
    text = _URL_PASSWORD.sub(lambda m: m["head"] + MASK, text)
    text = _SECRET_ASSIGNMENT.sub(lambda m: m["head"] + MASK, text)
    text = _BEARER.sub(lambda m: m["head"] + MASK, text)
    return _AWS_ACCESS_KEY_ID.sub(MASK, text)


def _last_lines(text: str, chars: int) -> str:
    """At most the last ``chars`` characters of ``text``, starting at a line start when cut."""
    if len(text) <= chars:
        return text
    text = text[-chars:]
    return text[text.find("\n") + 1 :] if "\n" in text else text


def log_tail(log: str, lines: int = LOG_TAIL_LINES, chars: int = LOG_TAIL_CHARS) -> str:
    """The last ``lines`` lines of ``log``, at most ``chars`` characters (cut at a line start)."""
    return _last_lines("\n".join(log.rstrip().splitlines()[-lines:]), chars)


def describe(headline: str, log: str | None = None, *, secrets: Iterable[str] = ()) -> str:
    """``headline`` plus the tail of ``log``, redacted (before cutting: no half secret) and bounded."""
    secrets = list(secrets)
    text = redact(headline.strip(), secrets)
    if len(text) > MAX_ERROR_CHARS // 2:
        text = text[: MAX_ERROR_CHARS // 2] + " [...]"
    tail = log_tail(redact(_last_lines(log, 64 * 1024), secrets)) if log else ""
    if tail:
        text += f"\nlast lines of the job's log:\n{tail}"
    return text[:MAX_ERROR_CHARS]
