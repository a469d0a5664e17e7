"""The platform's Ed25519 key: signs model cards; terminals pin the public key."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from facefleet.platform.settings import Settings, get_settings


def load_or_create_private_key(path: Path) -> Ed25519PrivateKey:
    """Read the PEM key at ``path``; generate it (mode 0600, atomically) on first use."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    os.replace(tmp, path)
    return key


def platform_private_key(settings: Settings | None = None) -> Ed25519PrivateKey:
    settings = settings or get_settings()
    return load_or_create_private_key(settings.effective_signing_key_path)


def public_key_pem(settings: Settings | None = None) -> str:
    key = platform_private_key(settings).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def sign_bytes(data: bytes, settings: Settings | None = None) -> str:
    """Base64 Ed25519 signature of ``data`` with the platform key."""
    return base64.b64encode(platform_private_key(settings).sign(data)).decode()


def verify_signature(public_pem: str, data: bytes, signature_b64: str) -> bool:
    """True when ``signature_b64`` is a valid signature of ``data`` under ``public_pem``."""
    try:
        key = serialization.load_pem_public_key(public_pem.encode())
        if not isinstance(key, Ed25519PublicKey):
            return False
        key.verify(base64.b64decode(signature_b64, validate=True), data)
    except (InvalidSignature, ValueError):
        return False
    return True
