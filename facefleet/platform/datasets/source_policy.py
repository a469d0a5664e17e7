"""Which dataset sources a process may read: allow-listed roots for the API, never facefleet's own files.

The API reads only under ``FACEFLEET_DATASET_ROOTS`` (folders and ``s3://`` prefixes) and refuses
everything else with one message that does not say whether the path exists. Every process refuses the
data dir, the object store, the database file (and its -wal/-shm/-journal companions) and the signing
key, after resolving symlinks and ``..``, and also under another name (a hard link): opening and closing
any descriptor of a SQLite file drops the POSIX locks the process's own connections hold, after which
another process may delete the write-ahead log under it and confirmed writes are lost.
Checks here only ``stat`` files; nothing is opened.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from facefleet.platform.errors import InvalidInputError, PermissionDeniedError
from facefleet.platform.settings import Settings

PATH_MAX_BYTES = 4096
COMPONENT_MAX_BYTES = 255
SHOWN_CHARS = 80
SQLITE_COMPANIONS = ("", "-wal", "-shm", "-journal")
NOT_ALLOWED = (
    "the server does not read this source: it reads only under the roots in FACEFLEET_DATASET_ROOTS "
    "(ask the operator), or upload the archive with POST /v1/datasets/upload "
    "(`facefleet datasets register PATH --server URL` does that)"
)


def shorten(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` cut to ``limit`` characters for messages and logs (a 10 MB path is not repeated)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


@dataclass(frozen=True)
class SourcePolicy:
    """``roots`` None: any source the process can read (the CLI on its user's machine)."""

    roots: tuple[str, ...] | None
    protected_dirs: tuple[Path, ...] = ()  # refused: themselves, what is inside, what contains them
    protected_files: tuple[Path, ...] = ()  # refused: themselves (any name) and what contains them
    protected_containers: tuple[Path, ...] = ()  # refused: themselves and what contains them
    protected_s3: tuple[str, ...] = ()
    protected_ids: frozenset[tuple[int, int]] = field(default=frozenset(), compare=False)  # (device, inode)

    @classmethod
    def for_server(cls, settings: Settings) -> SourcePolicy:
        return _build(settings, tuple(_normal_root(root) for root in settings.dataset_roots))

    @classmethod
    def for_local_user(cls, settings: Settings) -> SourcePolicy:
        return _build(settings, None)

    @classmethod
    def for_upload(cls, settings: Settings) -> SourcePolicy:
        """A file the server wrote itself from an upload: no roots, still never facefleet's files."""
        return _build(settings, None)

    def check(self, source: str | os.PathLike[str]) -> str:
        """The source as it will be recorded (resolved path or s3 URI), or a 4xx error; opens nothing."""
        text = os.fspath(source)
        _check_text(text)
        if text.startswith("s3://"):
            return self._check_s3(text)
        try:
            resolved = Path(os.path.realpath(Path(text).expanduser()))
        except (OSError, RuntimeError, ValueError):
            raise self._refusal("the path cannot be resolved") from None
        if self.roots is not None and not any(
            not root.startswith("s3://") and _within(resolved, Path(root)) for root in self.roots
        ):
            raise self._refusal("")
        self._check_not_protected(resolved)
        return str(resolved)

    def _check_s3(self, uri: str) -> str:
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise InvalidInputError(f"{shorten(uri)} is not an s3://bucket/prefix URI", field="source")
        normal = _normal_root(uri)
        if self.roots is not None and not any(
            root.startswith("s3://") and _s3_within(normal, root) for root in self.roots
        ):
            raise self._refusal("")
        if any(_s3_within(normal, store) or _s3_within(store, normal) for store in self.protected_s3):
            raise self._refusal("it holds facefleet's own object store")
        return uri

    def _check_not_protected(self, resolved: Path) -> None:
        for folder in self.protected_dirs:
            if _within(resolved, folder) or _within(folder, resolved):
                raise self._refusal("it holds facefleet's own object store")
        for item in (*self.protected_files, *self.protected_containers):
            if _within(item, resolved):
                raise self._refusal("it holds facefleet's own files (database, signing key or data dir)")
        if self.protected_ids:
            self._check_no_link_to_protected(resolved)

    def _check_no_link_to_protected(self, resolved: Path) -> None:
        """A hard link is the same file under another name: compare device and inode (stat only)."""
        try:
            if resolved.is_file():
                candidates = [resolved]
            elif resolved.is_dir():
                candidates = [
                    Path(folder) / name
                    for folder, _dirs, names in os.walk(resolved, followlinks=False)
                    for name in names
                ]
            else:
                return
        except OSError:
            return
        for candidate in candidates:
            try:
                info = candidate.stat()
            except OSError:
                continue
            if (info.st_dev, info.st_ino) in self.protected_ids:
                raise self._refusal("it is (or holds a link to) facefleet's database or signing key")

    def _refusal(self, reason: str) -> PermissionDeniedError:
        # On the server one message for every refusal: it must not tell what exists on the machine.
        if self.roots is not None or not reason:
            return PermissionDeniedError(NOT_ALLOWED, field="source")
        return PermissionDeniedError(
            f"this source cannot be registered: {reason}; give a folder or archive of images", field="source"
        )


def _check_text(text: str) -> None:
    if not text:
        raise InvalidInputError("source is empty; give a folder, an archive or an s3:// URI", field="source")
    if "\x00" in text:
        raise InvalidInputError("source contains a NUL character", field="source")
    encoded = len(text.encode("utf-8", "surrogateescape"))
    if encoded > PATH_MAX_BYTES:
        raise InvalidInputError(
            f"source is {encoded} bytes long; a path or URI may have at most {PATH_MAX_BYTES}", field="source"
        )
    for part in text.replace("\\", "/").split("/"):
        size = len(part.encode("utf-8", "surrogateescape"))
        if size > COMPONENT_MAX_BYTES:
            raise InvalidInputError(
                f"a name in the source path is {size} bytes long ({shorten(part, 40)}); "
                f"file and folder names may have at most {COMPONENT_MAX_BYTES} bytes",
                field="source",
            )


def _normal_root(root: str) -> str:
    if root.startswith("s3://"):
        parsed = urlparse(root)
        path = "/".join(part for part in parsed.path.split("/") if part)
        return f"s3://{parsed.netloc}/{path}".rstrip("/")
    return os.path.realpath(Path(root).expanduser())


def _s3_within(uri: str, root: str) -> bool:
    return uri == root or uri.startswith(root + "/")


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _build(settings: Settings, roots: tuple[str, ...] | None) -> SourcePolicy:
    data_dir = Path(os.path.realpath(settings.data_dir.expanduser()))
    store_url = settings.effective_store_url
    protected_dirs: list[Path] = []
    protected_s3: list[str] = []
    if store_url.startswith("file://"):
        protected_dirs.append(Path(os.path.realpath(urlparse(store_url).path)))
    elif store_url.startswith("s3://"):
        protected_s3.append(_normal_root(store_url))
    files = [Path(os.path.realpath(settings.effective_signing_key_path.expanduser()))]
    database = _sqlite_file(settings.effective_database_url)
    if database is not None:
        files += [Path(f"{database}{suffix}") for suffix in SQLITE_COMPANIONS]
    ids: set[tuple[int, int]] = set()
    for item in files:
        try:
            info = item.stat()
        except OSError:
            continue
        ids.add((info.st_dev, info.st_ino))
    return SourcePolicy(
        roots=roots,
        protected_dirs=tuple(protected_dirs),
        protected_files=tuple(files),
        protected_containers=(data_dir,),
        protected_s3=tuple(protected_s3),
        protected_ids=frozenset(ids),
    )


def _sqlite_file(url: str) -> Path | None:
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy reads: nothing to protect here
        return None
    if not parsed.drivername.startswith("sqlite") or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(os.path.realpath(Path(parsed.database).expanduser()))
