"""Pack images into deterministic tar shards with a parquet manifest (design.md §4), and read them back."""

from __future__ import annotations

import hashlib
import io
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from facefleet.platform.datasets import layout
from facefleet.platform.store.base import ObjectStore

DEFAULT_MAX_IMAGES = 1000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
_BLOCK = 512  # tar block size: every header and every data block is padded to it
_TAR_END = 2 * _BLOCK  # two zero blocks close an archive (tarfile may pad more up to a record)

MANIFEST_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),  # full store key of the tar
        ("member", pa.string()),  # member name inside the tar
        ("offset", pa.int64()),  # byte offset of the member's data in the tar (random access, S3 ranges)
        ("size", pa.int64()),  # member data size in bytes
        ("identity", pa.string()),
        ("label", pa.int64()),  # local label 0..C-1
        ("sha256", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]
)
PAIRS_SCHEMA = pa.schema([("left", pa.int64()), ("right", pa.int64()), ("is_same", pa.bool_())])

ProgressCallback = Callable[[int], None]


@dataclass(frozen=True)
class ImageRecord:
    """One image to pack: its identity, local label, member name inside the shard, and original bytes."""

    identity: str
    label: int
    member: str
    data: bytes
    sha256: str
    width: int
    height: int

    @classmethod
    def from_bytes(cls, *, identity: str, label: int, member: str, data: bytes) -> ImageRecord:
        """Build a record, hashing the bytes and reading the size from the image header (PIL, lazy)."""
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
        return cls(identity, label, member, data, hashlib.sha256(data).hexdigest(), width, height)


@dataclass(frozen=True)
class ManifestRow:
    """One manifest row: where an image lives (shard key, member, byte range) and who it is."""

    shard: str
    member: str
    offset: int
    size: int
    identity: str
    label: int
    sha256: str
    width: int
    height: int


def _check_member_name(member: str) -> None:
    path = PurePosixPath(member)
    if not member or path.is_absolute() or ".." in path.parts or "\\" in member or "\x00" in member:
        raise ValueError(f"shard member name {member!r} must be a plain relative path without '..'")


def _tar_info(member: str, size: int) -> tarfile.TarInfo:
    """Fixed metadata so identical content always gives identical shard bytes."""
    info = tarfile.TarInfo(member)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def _member_cost(member: str, size: int) -> int:
    """Bytes a member takes in the tar (header(s) + padded data), for the shard size limit."""
    header = len(_tar_info(member, size).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
    return header + -(-size // _BLOCK) * _BLOCK


class _ShardWriter:
    """Writes one shard to a temp file, remembering each member's data offset, then uploads it."""

    def __init__(self, tmp_dir: Path, key: str) -> None:
        self.key = key
        self.path = tmp_dir / PurePosixPath(key).name
        self._file = open(self.path, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)
        self.rows: list[ManifestRow] = []
        self.members: set[str] = set()
        self.bytes_used = _TAR_END

    def add(self, record: ImageRecord) -> None:
        if record.member in self.members:
            raise ValueError(f"duplicate member name {record.member!r} in shard {self.key}")
        info = _tar_info(record.member, len(record.data))
        header_len = len(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        data_offset = self._tar.offset + header_len
        self._tar.addfile(info, io.BytesIO(record.data))
        self.members.add(record.member)
        self.bytes_used += _member_cost(record.member, len(record.data))
        self.rows.append(
            ManifestRow(
                self.key,
                record.member,
                data_offset,
                len(record.data),
                record.identity,
                int(record.label),
                record.sha256,
                int(record.width),
                int(record.height),
            )
        )

    def finish(self, store: ObjectStore) -> list[ManifestRow]:
        self._tar.close()
        self._file.close()
        store.put_file(self.key, self.path, content_type="application/x-tar")
        self.path.unlink()
        return self.rows


def pack_shards(
    store: ObjectStore,
    dataset_name: str,
    version: int,
    records: Iterable[ImageRecord],
    *,
    max_images: int = DEFAULT_MAX_IMAGES,
    max_bytes: int = DEFAULT_MAX_BYTES,
    progress: ProgressCallback | None = None,
) -> list[ManifestRow]:
    """Pack records, in order, into tar shards of <= ``max_images`` / ``max_bytes``; return manifest rows.

    A shard holds at least one image even when that image alone exceeds ``max_bytes``. ``progress`` is
    called with 1 after each packed image. The caller deletes the version prefix if a later step fails.
    """
    if max_images < 1 or max_bytes < 1:
        raise ValueError("max_images and max_bytes must be positive")
    rows: list[ManifestRow] = []
    with tempfile.TemporaryDirectory(prefix="facefleet-shards-") as tmp:
        tmp_dir = Path(tmp)
        writer: _ShardWriter | None = None
        shard_index = 0
        for record in records:
            _check_member_name(record.member)
            if writer is not None and (
                len(writer.rows) >= max_images
                or writer.bytes_used + _member_cost(record.member, len(record.data)) > max_bytes
            ):
                rows.extend(writer.finish(store))
                writer = None
            if writer is None:
                writer = _ShardWriter(tmp_dir, layout.shard_key(dataset_name, version, shard_index))
                shard_index += 1
            writer.add(record)
            if progress is not None:
                progress(1)
        if writer is not None:
            rows.extend(writer.finish(store))
    return rows


def manifest_table(rows: Iterable[ManifestRow]) -> pa.Table:
    rows = list(rows)
    columns = {name: [getattr(row, name) for row in rows] for name in MANIFEST_SCHEMA.names}
    return pa.table(columns, schema=MANIFEST_SCHEMA)


def _put_table(store: ObjectStore, key: str, table: pa.Table) -> str:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    store.put_bytes(key, sink.getvalue().to_pybytes(), content_type="application/vnd.apache.parquet")
    return key


def _get_table(store: ObjectStore, key: str) -> pa.Table:
    return pq.read_table(pa.BufferReader(store.get_bytes(key)))


def write_manifest(store: ObjectStore, dataset_name: str, version: int, rows: Iterable[ManifestRow]) -> str:
    """Write the version's manifest parquet; returns its key."""
    return _put_table(store, layout.manifest_key(dataset_name, version), manifest_table(rows))


def read_manifest(store: ObjectStore, key: str) -> pa.Table:
    """The manifest as a pyarrow Table (columns of MANIFEST_SCHEMA); row i is image i of the version."""
    return _get_table(store, key)


def manifest_rows(table: pa.Table) -> list[ManifestRow]:
    return [ManifestRow(**row) for row in table.select(MANIFEST_SCHEMA.names).to_pylist()]


def write_pairs(
    store: ObjectStore,
    dataset_name: str,
    version: int,
    pairs: Iterable[tuple[int, int, bool]],
    folds: Sequence[int] | None = None,
) -> str:
    """Write verification pairs (manifest row numbers + same/different, and the fold of each pair when the
    source declares its folds: an extra ``fold`` column); returns the key."""
    pairs = list(pairs)
    columns: dict[str, list[Any]] = {
        "left": [int(p[0]) for p in pairs],
        "right": [int(p[1]) for p in pairs],
        "is_same": [bool(p[2]) for p in pairs],
    }
    schema = PAIRS_SCHEMA
    if folds is not None:
        if len(folds) != len(pairs):
            raise ValueError(f"{len(folds)} folds for {len(pairs)} pairs")
        columns["fold"] = [int(f) for f in folds]
        schema = PAIRS_SCHEMA.append(pa.field("fold", pa.int64()))
    return _put_table(store, layout.pairs_key(dataset_name, version), pa.table(columns, schema=schema))


def read_pair_folds(store: ObjectStore, key: str) -> list[int] | None:
    """The declared fold of each pair (the ``fold`` column), or None when the source declared none."""
    table = _get_table(store, key)
    return [int(f) for f in table["fold"].to_pylist()] if "fold" in table.column_names else None


def read_pairs(store: ObjectStore, key: str) -> list[tuple[int, int, bool]]:
    table = _get_table(store, key)
    return list(
        zip(table["left"].to_pylist(), table["right"].to_pylist(), table["is_same"].to_pylist(), strict=True)
    )


def iter_shard(store: ObjectStore, shard_key: str) -> Iterator[tuple[str, bytes]]:
    """(member, bytes) of every regular file in a shard, streamed from the store (nothing hits the disk)."""
    with store.open_stream(shard_key) as stream:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for info in tar:
                if not info.isreg():
                    continue
                handle = tar.extractfile(info)
                if handle is not None:
                    yield info.name, handle.read()


def read_range(store: ObjectStore, key: str, offset: int, size: int) -> bytes:
    """Bytes [offset, offset+size) of an object: a seek on the local store, a ranged GET on S3."""
    from facefleet.platform.store.local import LocalStore
    from facefleet.platform.store.s3 import S3Store

    if isinstance(store, LocalStore):
        with open(store.local_path(key), "rb") as handle:
            handle.seek(offset)
            return handle.read(size)
    if isinstance(store, S3Store):
        response = store.client.get_object(
            Bucket=store.bucket, Key=store._full(key), Range=f"bytes={offset}-{offset + size - 1}"
        )
        return bytes(response["Body"].read())
    with store.open_stream(key) as stream:  # any other store: read through
        stream.read(offset)
        return bytes(stream.read(size))


def read_image_bytes(
    store: ObjectStore, shard_key: str, member: str, *, offset: int | None = None, size: int | None = None
) -> bytes:
    """One image's bytes: by byte range when offset/size are given, else by scanning the tar."""
    if offset is not None and size is not None:
        return read_range(store, shard_key, offset, size)
    for name, data in iter_shard(store, shard_key):
        if name == member:
            return data
    raise KeyError(f"no member {member!r} in shard {shard_key}")
