"""Bring a dataset source to a local folder safely: folders, zip/tar(.gz) archives, s3:// prefixes, uploads.

Archive members and S3 keys are checked before anything is written: absolute paths, ``..`` segments,
links that point outside the archive and device files are fatal, and extraction only ever writes
regular files under the given work folder (links inside the archive become plain copies).
"""

from __future__ import annotations

import os
import shutil
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO
from urllib.parse import urlparse

from facefleet.platform.datasets.verification import IMAGE_SUFFIXES
from facefleet.platform.settings import Settings

_SKIPPED_NAMES = {"__MACOSX", ".DS_Store", "Thumbs.db"}
_COPY_CHUNK = 1 << 20


class SourceNotFoundError(ValueError):
    """The path or s3 prefix does not exist (a request error: nothing is recorded)."""


class UnsafeSourceError(ValueError):
    """The source tries to escape its folder or holds special files (fatal for the version)."""


def _safe_relative(name: str, what: str) -> PurePosixPath:
    """``name`` as a relative POSIX path inside the extraction folder, or UnsafeSourceError."""
    cleaned = name.replace("\\", "/")
    path = PurePosixPath(cleaned)
    if cleaned.startswith("/") or (len(cleaned) > 1 and cleaned[1] == ":") or "\x00" in cleaned:
        raise UnsafeSourceError(
            f"{what} {name!r} has an absolute path; archives must hold relative paths only"
        )
    if ".." in path.parts:
        raise UnsafeSourceError(f"{what} {name!r} contains '..' and would escape the extraction folder")
    return PurePosixPath(*[part for part in path.parts if part not in ("", ".")])


def _link_escapes(member_name: PurePosixPath, target: str, *, relative_to_member: bool) -> bool:
    """Whether a link at ``member_name`` pointing to ``target`` leaves the archive root."""
    if target.startswith("/") or "\\" in target:
        return True
    base = member_name.parent if relative_to_member else PurePosixPath()
    depth = len(base.parts)
    for part in PurePosixPath(target).parts:
        depth = depth - 1 if part == ".." else depth if part == "." else depth + 1
        if depth < 0:
            return True
    return False


@dataclass(frozen=True)
class ArchiveLimits:
    """How far an archive may expand; checked before and while extracting, so memory stays bounded."""

    max_bytes: int = 32 << 30
    max_entry_bytes: int = 1 << 30
    max_entries: int = 200_000
    max_ratio: float = 100.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ArchiveLimits:
        return cls(
            max_bytes=settings.archive_max_bytes,
            max_entry_bytes=settings.archive_max_entry_bytes,
            max_entries=settings.archive_max_entries,
            max_ratio=settings.archive_max_ratio,
        )


class ArchiveLimitError(UnsafeSourceError):
    """An archive expands past a limit (a zip bomb, or data to split): 413 naming the setting."""

    def __init__(self, message: str, *, setting: str) -> None:
        super().__init__(f"{message}; the limit is FACEFLEET_{setting.upper()}")
        self.setting = setting


class _Budget:
    """Counts entries and expanded bytes against the limits as they are written."""

    def __init__(self, archive: Path, limits: ArchiveLimits) -> None:
        self.archive = archive
        self.limits = limits
        self.archive_bytes = max(archive.stat().st_size, 1)
        self.entries = 0
        self.total = 0

    def entry(self, name: str, declared: int, compressed: int | None) -> None:
        """Before an entry is read: its count, its declared size and (zip) its own expansion ratio."""
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise ArchiveLimitError(
                f"{self.archive.name} holds more than {self.limits.max_entries} entries; split it "
                "or register a folder or s3:// prefix",
                setting="archive_max_entries",
            )
        self._check_entry_size(name, declared)
        if compressed is not None and declared > _RATIO_FLOOR:
            ratio = declared / max(compressed, 1)
            if ratio > self.limits.max_ratio:
                raise ArchiveLimitError(
                    f"entry {_short(name)!r} expands {ratio:.0f} times ({compressed} to {declared} bytes),"
                    f" more than {self.limits.max_ratio:g} (a compression bomb?)",
                    setting="archive_max_ratio",
                )

    def _check_entry_size(self, name: str, size: int) -> None:
        if size > self.limits.max_entry_bytes:
            raise ArchiveLimitError(
                f"entry {_short(name)!r} expands to more than {self.limits.max_entry_bytes} bytes",
                setting="archive_max_entry_bytes",
            )

    def expanded(self, name: str, entry_bytes: int, added: int) -> None:
        """After more bytes of an entry were produced (declared sizes can lie: count what comes out)."""
        self._check_entry_size(name, entry_bytes)
        self.total += added
        self.check_total(self.total)

    def check_total(self, total: int) -> None:
        """Expanded bytes so far (declared or written) against the total and the whole-archive ratio."""
        if total > self.limits.max_bytes:
            raise ArchiveLimitError(
                f"{self.archive.name} expands to more than {self.limits.max_bytes} bytes",
                setting="archive_max_bytes",
            )
        if total > _RATIO_FLOOR and total / self.archive_bytes > self.limits.max_ratio:
            raise ArchiveLimitError(
                f"{self.archive.name} ({self.archive_bytes} bytes) expands more than "
                f"{self.limits.max_ratio:g} times (a compression bomb?)",
                setting="archive_max_ratio",
            )


_RATIO_FLOOR = 1 << 20  # small entries (a pairs.txt) may compress well; ratios count above 1 MiB


def _short(name: str) -> str:
    return name if len(name) <= 80 else name[:80] + "..."


def _copy_stream(source: IO[bytes], destination: Path, name: str, budget: _Budget) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with destination.open("xb") as out:
        while chunk := source.read(_COPY_CHUNK):
            written += len(chunk)
            budget.expanded(name, written, len(chunk))
            out.write(chunk)


def _check_free_space(folder: Path, needed: int, archive: Path) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise UnsafeSourceError(
            f"{archive.name} expands to {needed >> 20} MiB but only {free >> 20} MiB are free"
            "; free space or split the archive"
        )


def _zip_entry_count(archive: Path) -> int | None:
    """Entries the zip's end record declares, read before zipfile loads the whole central directory."""
    try:
        with archive.open("rb") as handle:
            end = zipfile._EndRecData(handle)  # type: ignore[attr-defined]  # noqa: SLF001 - stable helper
    except (OSError, AttributeError):
        return None
    return int(end[4]) if end else None  # _ECD_ENTRIES_TOTAL


def extract_zip(archive: Path, destination: Path, limits: ArchiveLimits | None = None) -> list[str]:
    """Extract regular files of a zip under ``destination``; returns names of entries not extracted."""
    budget = _Budget(archive, limits or ArchiveLimits())
    declared_entries = _zip_entry_count(archive)
    if declared_entries is not None and declared_entries > budget.limits.max_entries:
        raise ArchiveLimitError(
            f"{archive.name} holds {declared_entries} entries, more than {budget.limits.max_entries}; "
            "split it or register a folder or s3:// prefix",
            setting="archive_max_entries",
        )
    skipped: list[str] = []
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:  # check everything before writing anything
            relative = _safe_relative(info.filename, "zip entry")
            budget.entry(info.filename, info.file_size, info.compress_size)
            mode = info.external_attr >> 16
            if (mode & 0o170000) == 0o120000:
                target = zf.read(info).decode("utf-8", "replace")
                if _link_escapes(relative, target, relative_to_member=True):
                    raise UnsafeSourceError(
                        f"zip entry {info.filename!r} is a link to {target!r} outside the archive"
                    )
        declared_total = sum(info.file_size for info in infos)
        budget.check_total(declared_total)
        _check_free_space(destination, declared_total, archive)
        for info in infos:
            relative = _safe_relative(info.filename, "zip entry")
            if info.is_dir() or not relative.parts:
                continue
            if ((info.external_attr >> 16) & 0o170000) == 0o120000:
                skipped.append(f"{info.filename}: symbolic link inside the archive (not followed)")
                continue
            with zf.open(info) as source:
                _copy_stream(source, destination.joinpath(*relative.parts), info.filename, budget)
    return skipped


def _check_tar_member(member: tarfile.TarInfo) -> PurePosixPath:
    relative = _safe_relative(member.name, "tar entry")
    if member.issym() and _link_escapes(relative, member.linkname, relative_to_member=True):
        raise UnsafeSourceError(
            f"tar entry {member.name!r} is a symbolic link to {member.linkname!r} outside the archive"
        )
    if member.islnk():
        if _link_escapes(relative, member.linkname, relative_to_member=False):
            raise UnsafeSourceError(
                f"tar entry {member.name!r} is a hard link to {member.linkname!r} outside the archive"
            )
    if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
        raise UnsafeSourceError(
            f"tar entry {member.name!r} is a device or FIFO; archives may hold only files and folders"
        )
    return relative


def extract_tar(archive: Path, destination: Path, limits: ArchiveLimits | None = None) -> list[str]:
    """Extract a tar(.gz/.bz2/.xz) under ``destination`` as regular files; returns names not extracted."""
    budget = _Budget(archive, limits or ArchiveLimits())
    skipped: list[str] = []
    with tarfile.open(archive, mode="r:*") as tar:
        checked: list[tuple[tarfile.TarInfo, PurePosixPath]] = []
        declared_total = 0
        for member in tar:  # headers one by one: a limit stops the listing before it grows further
            checked.append((member, _check_tar_member(member)))  # all checks before any write
            size = member.size if member.isreg() else 0
            budget.entry(member.name, size, None)
            declared_total += size
            budget.check_total(declared_total)
        _check_free_space(destination, declared_total, archive)
        for member, relative in checked:
            if member.isdir() or not relative.parts:
                continue
            if member.issym():
                skipped.append(f"{member.name}: symbolic link inside the archive (not followed)")
                continue
            # A hard link inside the archive is read from the member it names: extracted as a plain copy.
            source = tar.extractfile(member)
            if source is None:
                skipped.append(f"{member.name}: not a regular file")
                continue
            with source:
                _copy_stream(source, destination.joinpath(*relative.parts), member.name, budget)
    return skipped


def parse_s3_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise SourceNotFoundError(f"{uri!r} is not an s3://bucket/prefix URI")
    return parsed.netloc, parsed.path.lstrip("/")


def download_s3_prefix(uri: str, destination: Path) -> None:
    """Download every object under ``s3://bucket/prefix`` into ``destination``."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    from facefleet.platform.settings import get_settings
    from facefleet.platform.store.s3 import is_missing

    bucket, prefix = parse_s3_uri(uri)
    settings = get_settings()
    client = boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        config=Config(s3={"addressing_style": "path"}),
    )
    list_prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
    keys: list[tuple[str, int]] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=list_prefix):
            keys.extend((item["Key"], int(item["Size"])) for item in page.get("Contents", []))
        if not keys:
            raise SourceNotFoundError(f"{uri} has no objects: check the bucket name and the prefix")
        relatives = [(key, _safe_relative(key[len(list_prefix) :], "S3 key")) for key, _ in keys]
        _check_free_space(destination, sum(size for _, size in keys), Path(prefix or bucket))
        for key, relative in relatives:
            if not relative.parts or key.endswith("/"):
                continue  # folder placeholder objects
            target = destination.joinpath(*relative.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, key, str(target))
    except ClientError as error:
        if is_missing(error):
            raise SourceNotFoundError(f"{uri}: bucket {bucket!r} does not exist") from None
        code = str(error.response.get("Error", {}).get("Code", ""))
        raise SourceNotFoundError(
            f"{uri} could not be read ({code or error}); check credentials and endpoint"
        ) from None
    except BotoCoreError as error:
        raise SourceNotFoundError(f"{uri} could not be read: {error}") from None


def materialize(
    source: str | os.PathLike[str], workdir: Path, limits: ArchiveLimits | None = None
) -> tuple[Path, list[str]]:
    """A local folder or file holding the source's content, plus names of entries left out.

    Folders and ``.bin`` files are used in place; archives (recognised by content, so uploads saved
    under any name work) are extracted and s3:// prefixes downloaded under ``workdir``.
    """
    text = os.fspath(source)
    if text.startswith("s3://"):
        target = workdir / "s3"
        target.mkdir()
        download_s3_prefix(text, target)
        return target, []
    path = Path(text).expanduser()
    if not path.exists():
        raise SourceNotFoundError(
            f"{text} does not exist; give a folder, a .zip/.tar(.gz) archive, a .bin or s3://..."
        )
    if path.is_dir():
        return path, []
    target = workdir / "extracted"
    target.mkdir()
    if zipfile.is_zipfile(path):
        return target, extract_zip(path, target, limits)
    if _is_tar(path):
        return target, extract_tar(path, target, limits)
    return path, []


def _is_tar(path: Path) -> bool:
    try:
        with tarfile.open(path, mode="r:*"):
            return True
    except (tarfile.TarError, OSError, EOFError):
        return False


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def is_skipped_name(name: str) -> bool:
    return name in _SKIPPED_NAMES or name.startswith(".")


def inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (symlinks resolved) lies under ``root`` (resolved)."""
    try:
        path.resolve().relative_to(root.resolve())
    except (ValueError, OSError, RuntimeError):
        return False
    return True
