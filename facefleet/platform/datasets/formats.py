"""Recognise a materialised source's layout and list its images (and pairs) without decoding anything.

Layouts: ImageFolder (``<identity>/<image>``), insightface RecordIO (``train.rec`` + ``train.idx``),
an LFW-style verification folder (``pairs.txt`` + image folders) and an insightface ``.bin`` file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from facefleet.platform.datasets import recordio, verification
from facefleet.platform.datasets.sources import UnsafeSourceError, inside, is_image_name, is_skipped_name

SourceFormat = Literal["imagefolder", "recordio", "lfw_pairs", "insightface_bin", "landmarks"]
DatasetKind = Literal["train", "verification", "landmarks"]


class UnknownLayoutError(ValueError):
    """The source matches none of the layouts we read (fatal for the version)."""


@dataclass(frozen=True)
class SourceImage:
    """One candidate image: a stable relative name, its identity and how to read its bytes."""

    relpath: str
    identity: str
    read: Callable[[], bytes]


@dataclass
class ScannedSource:
    """What a source holds, before validation: candidate images, pairs (verification) and ignored entries."""

    format: SourceFormat
    images: list[SourceImage]
    pairs: list[tuple[str, str, bool]] | None = None
    pair_folds: list[int] | None = None  # per pair, the fold its file declares (LFW header), else None
    ignored: list[str] = field(default_factory=list)
    properties: dict[str, int] = field(default_factory=dict)
    landmarks: dict[str, Callable[[], bytes]] = field(default_factory=dict)  # image relpath -> its .pts


# Memory stays bounded whatever a source holds: no image file is read past this size.
IMAGE_MAX_BYTES = 16 << 20


def _file_reader(path: Path) -> Callable[[], bytes]:
    def read() -> bytes:
        with path.open("rb") as handle:
            data = handle.read(IMAGE_MAX_BYTES + 1)
        if len(data) > IMAGE_MAX_BYTES:
            raise OSError(f"larger than {IMAGE_MAX_BYTES >> 20} MiB (face images are far smaller)")
        return data

    return read


def _bytes_reader(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def walk_files(root: Path) -> tuple[list[str], list[str]]:
    """Relative POSIX paths of all regular files under ``root`` and the entries ignored.

    Symbolic links are never followed out of ``root``: a link that escapes it is fatal, a link to a
    file inside it is read like a file, a link to a folder is ignored (no loops).
    """
    files: list[str] = []
    ignored: list[str] = []
    for folder, dirnames, filenames in os.walk(root, followlinks=False):
        folder_path = Path(folder)
        relative_folder = folder_path.relative_to(root).as_posix()
        for name in sorted(dirnames):
            link = folder_path / name
            if link.is_symlink():
                if not inside(link, root):
                    raise UnsafeSourceError(
                        f"{_join(relative_folder, name)} is a symbolic link pointing outside the folder"
                    )
                ignored.append(f"{_join(relative_folder, name)}: link to a folder (not followed)")
        dirnames[:] = sorted(
            name for name in dirnames if not is_skipped_name(name) and not (folder_path / name).is_symlink()
        )
        for name in sorted(filenames):
            relative = _join(relative_folder, name)
            path = folder_path / name
            if path.is_symlink() and not inside(path, root):
                raise UnsafeSourceError(f"{relative} is a symbolic link pointing outside the folder")
            if is_skipped_name(name):
                continue
            if not path.is_file():
                raise UnsafeSourceError(f"{relative} is not a regular file (device, socket or FIFO)")
            files.append(relative)
    return files, ignored


def _join(folder: str, name: str) -> str:
    return name if folder in ("", ".") else f"{folder}/{name}"


def _content_root(root: Path) -> Path:
    """Descend through single wrapper folders (``archive/dataset/...``) to where the content starts."""
    while True:
        entries = [entry for entry in root.iterdir() if not is_skipped_name(entry.name)]
        if len(entries) != 1 or not entries[0].is_dir() or entries[0].is_symlink():
            return root
        child = entries[0]
        child_entries = [entry for entry in child.iterdir() if not is_skipped_name(entry.name)]
        markers = {"train.rec", "pairs.txt"}
        if not any(entry.is_dir() or entry.name in markers for entry in child_entries):
            return root  # a single identity folder of images: root is already the content
        root = child


def scan_imagefolder(root: Path) -> ScannedSource:
    files, ignored = walk_files(root)
    images: list[SourceImage] = []
    for relative in files:
        parts = relative.split("/")
        if len(parts) < 2:
            ignored.append(f"{relative}: file at the top level (images belong in <identity>/ folders)")
        elif not is_image_name(relative):
            ignored.append(f"{relative}: not an image file name ({', '.join(verification.IMAGE_SUFFIXES)})")
        else:
            images.append(SourceImage(relative, parts[0], _file_reader(root / relative)))
    return ScannedSource("imagefolder", images, ignored=ignored)


def scan_recordio(root: Path) -> ScannedSource:
    rec_path, idx_path = root / "train.rec", root / "train.idx"
    if not idx_path.is_file():
        raise UnknownLayoutError(
            "train.rec found without train.idx; both files of the RecordIO pair are needed"
        )
    for path in (rec_path, idx_path):
        if path.is_symlink() and not inside(path, root):
            raise UnsafeSourceError(f"{path.name} is a symbolic link pointing outside the folder")
    images = [
        SourceImage(
            f"{record.label}/{record.index}{_image_suffix(record.image)}",
            str(record.label),
            _bytes_reader(record.image),
        )
        for record in recordio.iter_records(rec_path, idx_path)
    ]
    prop = recordio.read_property(root)
    properties = {"num_classes": prop[0], "height": prop[1], "width": prop[2]} if prop else {}
    return ScannedSource("recordio", images, properties=properties)


def scan_pairs_folder(root: Path) -> ScannedSource:
    pairs = verification.read_pairs_file(root / "pairs.txt", root)
    wanted = {name for pair in pairs for name in (pair.left, pair.right)}
    files, ignored = walk_files(root)
    present = set(files)
    images = [
        SourceImage(name, name.split("/")[0] if "/" in name else "", _file_reader(root / name))
        for name in sorted(wanted & present)
    ]
    for name in sorted(wanted - present):
        ignored.append(f"{name}: listed in pairs.txt but missing")
    folds = [p.fold for p in pairs]
    return ScannedSource(
        "lfw_pairs",
        images,
        pairs=[(p.left, p.right, p.is_same) for p in pairs],
        pair_folds=None if None in folds else [int(f) for f in folds if f is not None],
        ignored=ignored,
    )


def scan_landmarks(root: Path) -> ScannedSource:
    """``<image>`` + ``<image stem>.pts`` anywhere under ``root``; every image is one face's markup."""
    files, ignored = walk_files(root)
    present = set(files)
    images: list[SourceImage] = []
    landmarks: dict[str, Callable[[], bytes]] = {}
    used: set[str] = set()
    for relative in files:
        if not is_image_name(relative):
            continue
        pts = relative.rsplit(".", 1)[0] + ".pts"
        if pts not in present:
            ignored.append(f"{relative}: no {pts.rsplit('/', 1)[-1]} landmark file beside it")
            continue
        folder = relative.rsplit("/", 1)[0] if "/" in relative else "faces"
        images.append(SourceImage(relative, folder, _file_reader(root / relative)))
        landmarks[relative] = _file_reader(root / pts)
        used.add(pts)
    ignored += [
        f"{name}: not an image with a .pts landmark file"
        for name in files
        if name not in used and not is_image_name(name)
    ]
    return ScannedSource("landmarks", images, ignored=ignored, landmarks=landmarks)


def scan_bin(path: Path) -> ScannedSource:
    blobs, flags = verification.load_bin(path)
    images = [
        SourceImage(f"{index:06d}{_image_suffix(blob)}", "", _bytes_reader(blob))
        for index, blob in enumerate(blobs)
    ]
    pairs = [(images[2 * i].relpath, images[2 * i + 1].relpath, flag) for i, flag in enumerate(flags)]
    return ScannedSource("insightface_bin", images, pairs=pairs)


def _image_suffix(data: bytes) -> str:
    """A file suffix from the image's magic bytes, so packed members keep a telling name."""
    if data.startswith(b"\xff\xd8"):
        return ".jpg"
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data.startswith(b"BM"):
        return ".bmp"
    return ".img"


def scan_source(location: Path, kind: DatasetKind) -> ScannedSource:
    """Pick the layout of ``location`` and list its content; the kind picks train or verification layouts."""
    if location.is_file():
        if kind != "verification":
            raise UnknownLayoutError(
                f"{location.name} is a single file that is not an archive; "
                "for a .bin verification set use kind=verification"
            )
        return scan_bin(location)
    root = _content_root(location)
    if kind == "landmarks":
        return scan_landmarks(root)
    has_pairs, has_rec = (root / "pairs.txt").is_file(), (root / "train.rec").is_file()
    if kind == "verification":
        if not has_pairs:
            raise UnknownLayoutError(
                "a verification set needs a pairs.txt (LFW layout) next to its image folders, or a .bin file"
            )
        return scan_pairs_folder(root)
    if has_rec:
        return scan_recordio(root)
    return scan_imagefolder(root)
