"""The object-store interface and key validation shared by every implementation."""

from __future__ import annotations

import abc
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

_KEY_CHARS = re.compile(r"^[A-Za-z0-9._\-/@=+]+$")


class InvalidKeyError(ValueError):
    """A key that could escape the store's root or is not a plain relative path."""


class ObjectNotFoundError(KeyError):
    """No object under that key."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else "object not found"


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object key, else raise InvalidKeyError saying why."""
    if not isinstance(key, str) or not key:
        raise InvalidKeyError("object key must be a non-empty string")
    if key.startswith("/") or key.startswith("\\") or re.match(r"^[A-Za-z]:", key):
        raise InvalidKeyError(f"object key {key!r} is absolute; use a relative key such as 'datasets/a/1/x'")
    if "\\" in key or "\x00" in key:
        raise InvalidKeyError(f"object key {key!r} contains a backslash or NUL byte")
    parts = key.split("/")
    if any(part in ("..", ".") for part in parts):
        raise InvalidKeyError(
            f"object key {key!r} contains '.' or '..' segments; keys may not leave the store"
        )
    if any(part == "" for part in parts):
        raise InvalidKeyError(f"object key {key!r} has an empty segment (leading, trailing or double '/')")
    if not _KEY_CHARS.match(key):
        raise InvalidKeyError(f"object key {key!r} has characters outside [A-Za-z0-9._-/@=+]")
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a valid key optionally ending in '/'."""
    if prefix == "":
        return prefix
    validate_key(prefix.rstrip("/") or "x")
    return prefix


class ObjectStore(abc.ABC):
    """Bytes under keys. Writes are atomic: a reader never sees half an object."""

    url: str

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None) -> None: ...

    @abc.abstractmethod
    def put_file(self, key: str, path: Path, *, content_type: str | None = None) -> None: ...

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abc.abstractmethod
    def get_file(self, key: str, path: Path) -> None:
        """Download to ``path`` atomically (temp file + rename)."""

    @abc.abstractmethod
    def open_stream(self, key: str) -> BinaryIO:
        """A readable binary stream; the caller closes it."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def size(self, key: str) -> int: ...

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """All keys under ``prefix`` (recursive), sorted."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete one object; deleting a missing key is not an error."""

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for key in keys:
            self.delete(key)
        return len(keys)

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Stream an object in chunks (for streamed HTTP downloads)."""
        with self.open_stream(key) as stream:
            while chunk := stream.read(chunk_size):
                yield chunk

    def presigned_url(self, key: str, expires_seconds: int = 3600) -> str | None:
        """A URL a client can GET directly, or None when the store cannot make one (stream instead)."""
        return None

    def pyarrow_storage(self) -> tuple[str, object | None]:
        """(storage_path, filesystem) for Ray Train checkpoints under this store's root."""
        raise NotImplementedError
