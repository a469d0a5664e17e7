"""Read insightface RecordIO datasets (train.rec + train.idx [+ property]) without MXNet."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

RECORD_MAGIC = 0xCED7230A
_RECORD_HEADER = struct.Struct("<II")  # magic, lrecord (upper 3 bits: continuation flag, lower 29: length)
IR_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2 (MXNet's IRHeader)


class RecordIOError(ValueError):
    """The .rec/.idx pair is not a readable MXNet RecordIO file."""


@dataclass(frozen=True)
class RecordImage:
    """One image record: its key in the .idx file, the identity label and where its bytes are."""

    index: int
    label: int
    image: bytes


def read_index(idx_path: Path) -> list[tuple[int, int]]:
    """``(record key, byte offset)`` pairs from a tab-separated .idx file, in file order."""
    entries: list[tuple[int, int]] = []
    for line_number, line in enumerate(
        idx_path.read_text(encoding="ascii", errors="replace").splitlines(), 1
    ):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not all(field.isdigit() for field in fields):
            raise RecordIOError(f"{idx_path.name} line {line_number} is not 'key<TAB>offset': {line[:60]!r}")
        entries.append((int(fields[0]), int(fields[1])))
    if not entries:
        raise RecordIOError(f"{idx_path.name} is empty")
    return entries


def read_record(stream: BinaryIO, offset: int) -> bytes:
    """The payload of the record at ``offset``, joining the parts MXNet splits where the magic appears."""
    stream.seek(offset)
    parts: list[bytes] = []
    while True:
        header = stream.read(_RECORD_HEADER.size)
        if len(header) < _RECORD_HEADER.size:
            raise RecordIOError(f"record at offset {offset} is truncated (file ends inside its header)")
        magic, lrecord = _RECORD_HEADER.unpack(header)
        if magic != RECORD_MAGIC:
            raise RecordIOError(
                f"record at offset {offset} has bad magic {magic:#x}; the .idx does not match the .rec"
            )
        continuation, length = lrecord >> 29, lrecord & ((1 << 29) - 1)
        payload = stream.read(length)
        if len(payload) < length:
            raise RecordIOError(f"record at offset {offset} is truncated ({len(payload)} of {length} bytes)")
        stream.seek((4 - length % 4) % 4, 1)  # records are padded to 4 bytes
        parts.append(payload)
        if continuation in (0, 3):  # whole record, or the last part of a split one
            return struct.pack("<I", RECORD_MAGIC).join(parts)
        if continuation not in (1, 2):
            raise RecordIOError(f"record at offset {offset} has unknown continuation flag {continuation}")


def unpack_image_record(payload: bytes) -> tuple[list[float], bytes]:
    """(labels, image bytes) of an image record: IRHeader, ``flag`` extra float labels, then the image."""
    if len(payload) < IR_HEADER.size:
        raise RecordIOError("record shorter than its IRHeader")
    flag, label, _id, _id2 = IR_HEADER.unpack_from(payload)
    if flag == 0:
        return [label], payload[IR_HEADER.size :]
    end = IR_HEADER.size + 4 * flag
    if flag > 1 << 20 or len(payload) < end:
        raise RecordIOError(f"record declares {flag} labels but is only {len(payload)} bytes")
    labels = list(struct.unpack_from(f"<{flag}f", payload, IR_HEADER.size))
    return labels, payload[end:]


def image_keys(stream: BinaryIO, index: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The (key, offset) entries holding images.

    insightface writes a header record 0 with ``flag > 0`` whose labels say where images end
    (``label[0]``); the records after that only hold identity ranges and carry no image.
    """
    offsets = dict(index)
    if 0 not in offsets:
        return index
    header = read_record(stream, offsets[0])
    if len(header) < IR_HEADER.size or IR_HEADER.unpack_from(header)[0] == 0:
        return index  # record 0 is an ordinary image
    labels, _ = unpack_image_record(header)
    images_end = int(labels[0])
    return [(key, offset) for key, offset in index if 1 <= key < images_end]


def iter_records(rec_path: Path, idx_path: Path) -> Iterator[RecordImage]:
    """Every image record of the pair, in key order, with its integer identity label."""
    index = sorted(read_index(idx_path))
    with rec_path.open("rb") as stream:
        for key, offset in image_keys(stream, index):
            labels, image = unpack_image_record(read_record(stream, offset))
            yield RecordImage(index=key, label=int(labels[0]), image=image)


def read_property(folder: Path) -> tuple[int, int, int] | None:
    """``(num_classes, height, width)`` from insightface's ``property`` file, or None if absent/unreadable."""
    path = folder / "property"
    if not path.is_file():
        return None
    try:
        fields = [int(value) for value in path.read_text(encoding="ascii").strip().split(",")]
    except (ValueError, UnicodeDecodeError):
        return None
    return (fields[0], fields[1], fields[2]) if len(fields) == 3 else None
