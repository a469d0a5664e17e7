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
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from facefleet.platform.datasets.verification import IMAGE_SUFFIXES

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


def _copy_stream(source, destination: Path) -> None:  # type: ignore[no-untyped-def]
    destination.parent.mkdir(parents=True, exist_ok=True)
    with destination.open("xb") as out:
        shutil.copyfileobj(source, out, _COPY_CHUNK)


def _check_free_space(folder: Path, needed: int, archive: Path) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise UnsafeSourceError(
            f"{archive.name} expands to {needed >> 20} MiB but only {free >> 20} MiB are free"
            "; free space or split the archive"
        )


def extract_zip(archive: Path, destination: Path) -> list[str]:
    """Extract regular files of a zip under ``destination``; returns names of entries not extracted."""
    skipped: list[str] = []
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:  # check everything before writing anything
            relative = _safe_relative(info.filename, "zip entry")
            mode = info.external_attr >> 16
            if (mode & 0o170000) == 0o120000:
                target = zf.read(info).decode("utf-8", "replace")
                if _link_escapes(relative, target, relative_to_member=True):
                    raise UnsafeSourceError(
                        f"zip entry {info.filename!r} is a link to {target!r} outside the archive"
                    )
        _check_free_space(destination, sum(info.file_size for info in infos), archive)
        for info in infos:
            relative = _safe_relative(info.filename, "zip entry")
            if info.is_dir() or not relative.parts:
                continue
            if ((info.external_attr >> 16) & 0o170000) == 0o120000:
                skipped.append(f"{info.filename}: symbolic link inside the archive (not followed)")
                continue
            with zf.open(info) as source:
                _copy_stream(source, destination.joinpath(*relative.parts))
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


def extract_tar(archive: Path, destination: Path) -> list[str]:
    """Extract a tar(.gz/.bz2/.xz) under ``destination`` as regular files; returns names not extracted."""
    skipped: list[str] = []
    with tarfile.open(archive, mode="r:*") as tar:
        members = tar.getmembers()
        checked = [(member, _check_tar_member(member)) for member in members]  # all checks before any write
        _check_free_space(destination, sum(member.size for member in members if member.isreg()), archive)
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
                _copy_stream(source, destination.joinpath(*relative.parts))
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
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in {"NoSuchBucket", "404", "NotFound"}:
            raise SourceNotFoundError(f"{uri}: bucket {bucket!r} does not exist") from None
        raise SourceNotFoundError(
            f"{uri} could not be read ({code or error}); check credentials and endpoint"
        ) from None
    except BotoCoreError as error:
        raise SourceNotFoundError(f"{uri} could not be read: {error}") from None


def materialize(source: str | os.PathLike[str], workdir: Path) -> tuple[Path, list[str]]:
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
        return target, extract_zip(path, target)
    if _is_tar(path):
        return target, extract_tar(path, target)
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
