"""Verification-set formats: LFW-style ``pairs.txt`` next to image folders, and insightface ``.bin`` pickles.

A ``.bin`` is ``pickle((list_of_image_bytes, list_of_is_same_bools))``. It is read with an unpickler that
builds only bytes, bytearrays, lists, tuples and booleans; any other global (``os.system``, classes,
numpy) is refused before it can run, so a malicious file cannot execute code.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".webp", ".tif", ".tiff")
MAX_BIN_BYTES = 4 << 30


class VerificationFormatError(ValueError):
    """The pairs file or .bin is not in a format we read; the message says what is wrong."""


@dataclass(frozen=True)
class PathPair:
    """Two images (paths relative to the set's folder) and whether they show the same person."""

    left: str
    right: str
    is_same: bool
    fold: int | None = None  # the fold the file declares for this pair (LFW header), else None


# ---------------------------------------------------------------- .bin


def _latin1_encode(text: object, encoding: str = "latin1") -> bytes:
    """What Python 3 pickles of bytes at protocol < 3 call: ``_codecs.encode(str, 'latin1')``, only that."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError("_codecs.encode is allowed only as encode(str, 'latin1') for bytes")
    return text.encode("latin1")


class RestrictedUnpickler(pickle.Unpickler):
    """Builds only plain data: every global lookup is refused except ``bytearray`` and latin-1 bytes."""

    _ALLOWED = {
        ("builtins", "bytearray"): bytearray,
        ("__builtin__", "bytearray"): bytearray,
        ("_codecs", "encode"): _latin1_encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        allowed = self._ALLOWED.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(
                f"the .bin refers to {module}.{name}; only bytes, lists, tuples and booleans are accepted"
            )
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("the .bin uses persistent ids; only plain data is accepted")


def _check_plain(value: Any, depth: int = 0) -> None:
    """Reject anything but bytes, bytearray, list, tuple and bool (after loading, before use)."""
    if isinstance(value, bool | bytes | bytearray):
        return
    if isinstance(value, list | tuple) and depth < 3:
        for item in value:
            _check_plain(item, depth + 1)
        return
    raise VerificationFormatError(
        f"the .bin holds a {type(value).__name__}; only bytes, lists, tuples and booleans are accepted"
    )


def load_bin(path: Path) -> tuple[list[bytes], list[bool]]:
    """(images, is_same per pair) from an insightface ``.bin``; images 2i and 2i+1 form pair i."""
    if path.stat().st_size > MAX_BIN_BYTES:
        raise VerificationFormatError(f"{path.name} is larger than {MAX_BIN_BYTES >> 30} GiB")
    try:
        with path.open("rb") as handle:
            # encoding="bytes": Python 2 str objects (how insightface wrote its .bin files) become bytes.
            loaded = RestrictedUnpickler(io.BufferedReader(handle), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as error:
        raise VerificationFormatError(f"{path.name} is not a readable verification .bin: {error}") from None
    _check_plain(loaded)
    if not isinstance(loaded, list | tuple) or len(loaded) != 2:
        raise VerificationFormatError(
            f"{path.name} must hold (images, is_same_list); found a {type(loaded).__name__}"
        )
    images, flags = loaded
    if not isinstance(images, list | tuple) or not all(
        isinstance(image, bytes | bytearray) for image in images
    ):
        raise VerificationFormatError(f"{path.name}: the first element must be a list of image bytes")
    if not isinstance(flags, list | tuple) or not all(isinstance(flag, bool) for flag in flags):
        raise VerificationFormatError(f"{path.name}: the second element must be a list of booleans")
    if len(images) != 2 * len(flags):
        raise VerificationFormatError(
            f"{path.name} holds {len(images)} images for {len(flags)} pairs; expected "
            "exactly 2 images per pair"
        )
    return [bytes(image) for image in images], list(flags)


# ---------------------------------------------------------------- pairs.txt


def _is_int(text: str) -> bool:
    # ASCII digits only: str.isdigit() also accepts '²', which int() refuses.
    return text.isascii() and text.isdigit()


_TRUE = {"1", "true", "same", "yes"}
_FALSE = {"0", "false", "different", "diff", "no"}


def parse_pairs_line(fields: list[str]) -> tuple[tuple[str, int] | str, tuple[str, int] | str, bool]:
    """One pairs line: LFW ``name n1 n2`` / ``name1 n1 name2 n2``, or ``path1 path2 same(0|1)``."""
    if len(fields) == 3 and _is_int(fields[1]) and _is_int(fields[2]):
        return (fields[0], int(fields[1])), (fields[0], int(fields[2])), True
    if len(fields) == 4 and _is_int(fields[1]) and _is_int(fields[3]):
        return (fields[0], int(fields[1])), (fields[2], int(fields[3])), False
    if len(fields) == 3 and fields[2].lower() in _TRUE | _FALSE:
        return fields[0], fields[1], fields[2].lower() in _TRUE
    raise VerificationFormatError(
        "expected 'name n1 n2', 'name1 n1 name2 n2' (LFW) or 'path1 path2 0|1', got " + " ".join(fields)[:80]
    )


def _lfw_image(folder: Path, name: str, number: int) -> str:
    """The path of LFW image ``<name>/<name>_<NNNN>.<ext>`` relative to ``folder`` (first suffix found)."""
    for suffix in IMAGE_SUFFIXES:
        relative = f"{name}/{name}_{number:04d}{suffix}"
        if (folder / relative).is_file():
            return relative
    return f"{name}/{name}_{number:04d}.jpg"  # missing: reported by the caller as an unresolved pair


def declared_fold_of(header: list[str], pair_count: int) -> list[int] | None:
    """The fold of each pair that an LFW header ``folds pairs_per_class`` declares: fold f is the f-th block
    of 2 * pairs_per_class lines (in LFW: pairs_per_class same pairs, then as many different ones). None
    when the header declares no folds (one number, e.g. pairsDevTrain.txt's count; fewer than two folds)
    or when the file does not hold exactly folds * 2 * pairs_per_class pairs (then the header cannot be
    what cuts the file, and the evaluation falls back to stratified folds)."""
    if len(header) != 2:
        return None
    folds, per_class = int(header[0]), int(header[1])
    if folds < 2 or per_class < 1 or folds * 2 * per_class != pair_count:
        return None
    return [index // (2 * per_class) for index in range(pair_count)]


def read_pairs_file(pairs_path: Path, image_root: Path) -> list[PathPair]:
    """All pairs of ``pairs_path``; a first line of only integers (LFW's 'folds pairs') is the header: when
    it declares the folds (``declared_fold_of``) each pair carries its fold."""
    lines = [line.split() for line in pairs_path.read_text(encoding="utf-8", errors="replace").splitlines()]
    lines = [fields for fields in lines if fields and not fields[0].startswith("#")]
    header: list[str] = []
    if lines and all(_is_int(field) for field in lines[0]) and len(lines[0]) <= 2:
        header, lines = lines[0], lines[1:]
    fold_of = declared_fold_of(header, len(lines))
    pairs: list[PathPair] = []
    for line_number, fields in enumerate(lines, 1):
        try:
            left, right, is_same = parse_pairs_line(fields)
        except VerificationFormatError as error:
            raise VerificationFormatError(f"{pairs_path.name} pair {line_number}: {error}") from None
        pairs.append(
            PathPair(
                left=left if isinstance(left, str) else _lfw_image(image_root, *left),
                right=right if isinstance(right, str) else _lfw_image(image_root, *right),
                is_same=is_same,
                fold=None if fold_of is None else fold_of[line_number - 1],
            )
        )
    if not pairs:
        raise VerificationFormatError(f"{pairs_path.name} lists no pairs")
    return pairs
