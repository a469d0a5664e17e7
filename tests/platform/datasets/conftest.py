"""Small generated fixtures for dataset tests: tiny JPEG/PNG faces, ImageFolder, RecordIO, .bin."""

from __future__ import annotations

import io
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from facefleet.platform.datasets.recordio import IR_HEADER, RECORD_MAGIC


def image_bytes(seed: int, fmt: str = "JPEG", size: tuple[int, int] = (24, 28)) -> bytes:
    """A small image whose pixels depend on ``seed`` (different seeds give different bytes)."""
    image = Image.new("RGB", size, ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256))
    image.putpixel((seed % size[0], (seed // size[0]) % size[1]), (255 - (seed % 256), 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def make_imagefolder(root: Path, identities: int = 3, images: int = 4, seed: int = 0) -> Path:
    """``root/id<i>/<j>.jpg|png`` (every third image a PNG)."""
    for identity in range(identities):
        folder = root / f"id{identity}"
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(images):
            fmt, suffix = ("PNG", "png") if index % 3 == 2 else ("JPEG", "jpg")
            (folder / f"{index}.{suffix}").write_bytes(image_bytes(seed + identity * 100 + index, fmt))
    return root


def _record(payload: bytes) -> bytes:
    pad = (4 - len(payload) % 4) % 4
    return struct.pack("<II", RECORD_MAGIC, len(payload)) + payload + b"\x00" * pad


def make_recordio(folder: Path, labels: list[int], *, with_header: bool = True) -> Path:
    """An insightface-style train.rec/.idx/property: header record 0, images, identity ranges."""
    folder.mkdir(parents=True, exist_ok=True)
    payloads: list[tuple[int, bytes]] = []
    images_end = len(labels) + 1
    if with_header:
        identities = sorted(set(labels))
        header = IR_HEADER.pack(2, 0.0, 0, 0) + struct.pack("<2f", images_end, images_end + len(identities))
        payloads.append((0, header))
    first = 1 if with_header else 0
    for offset, label in enumerate(labels):
        payloads.append(
            (first + offset, IR_HEADER.pack(0, float(label), first + offset, 0) + image_bytes(500 + offset))
        )
    if with_header:
        for position, label in enumerate(sorted(set(labels))):
            starts = [first + i for i, value in enumerate(labels) if value == label]
            range_record = IR_HEADER.pack(2, 0.0, 0, 0) + struct.pack("<2f", starts[0], starts[-1] + 1)
            payloads.append((images_end + position, range_record))
    rec, idx = bytearray(), []
    for key, payload in payloads:
        idx.append(f"{key}\t{len(rec)}")
        rec += _record(payload)
    (folder / "train.rec").write_bytes(bytes(rec))
    (folder / "train.idx").write_text("\n".join(idx) + "\n")
    (folder / "property").write_text(f"{len(set(labels))},112,112")
    return folder


def make_bin(path: Path, pairs: int = 4, protocol: int = 4) -> Path:
    images = [image_bytes(900 + i) for i in range(2 * pairs)]
    flags = [i % 2 == 0 for i in range(pairs)]
    path.write_bytes(pickle.dumps((images, flags), protocol=protocol))
    return path


def make_lfw_folder(root: Path, people: int = 4, per_person: int = 3) -> Path:
    """LFW layout: ``<name>/<name>_<NNNN>.jpg`` and a pairs.txt with a '1 N' header."""
    names = [f"Person_{chr(65 + i)}" for i in range(people)]
    for p, name in enumerate(names):
        (root / name).mkdir(parents=True, exist_ok=True)
        for n in range(1, per_person + 1):
            (root / name / f"{name}_{n:04d}.jpg").write_bytes(image_bytes(700 + p * 10 + n))
    lines = [f"{name}\t1\t2" for name in names] + [
        f"{names[i]}\t1\t{names[i + 1]}\t2" for i in range(people - 1)
    ]
    (root / "pairs.txt").write_text(f"1\t{len(lines)}\n" + "\n".join(lines) + "\n")
    return root


@pytest.fixture
def imagefolder_factory(tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(1000))

    def build(identities: int = 3, images: int = 4, seed: int = 0) -> Path:
        return make_imagefolder(tmp_path / f"faces{next(counter)}", identities, images, seed)

    return build


@pytest.fixture
def sqlite_session(sqlite_engine):  # type: ignore[no-untyped-def]
    """One SQLite session (for format tests where PostgreSQL adds nothing but time)."""
    from sqlalchemy.orm import Session

    with Session(sqlite_engine, expire_on_commit=False) as session:
        yield session
        session.rollback()
