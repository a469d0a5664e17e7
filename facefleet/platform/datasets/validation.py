"""Validate a scanned source: hash and decode every image, build the report, decide what is kept.

Fatal problems raise DatasetInvalidError (the version cannot exist); non-fatal ones (undecodable or
truncated files, identities with too few images, pairs whose images were dropped) are skipped and listed.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from facefleet.platform.datasets.formats import ScannedSource, SourceImage
from facefleet.platform.datasets.schemas import (
    DuplicateGroup,
    ProblemFile,
    SmallIdentity,
    ValidationReport,
)

MAX_LISTED = 500  # report lists are capped so a huge broken dataset still gives a readable report
IMAGE_MAX_PIXELS = 4096 * 4096  # decoded RGB stays under 50 MB; face crops are far smaller

StageProgress = Callable[[str, int, int], None]


class DatasetInvalidError(ValueError):
    """A fatal problem: no version can be made from this content. ``content_hash`` if content was read."""

    def __init__(
        self, message: str, *, content_hash: str | None = None, report: ValidationReport | None = None
    ) -> None:
        super().__init__(message)
        self.content_hash = content_hash
        self.report = report


@dataclass(frozen=True)
class CheckedImage:
    """A candidate image after hashing and decoding (``error`` set when it cannot be used)."""

    source: SourceImage
    sha256: str
    width: int
    height: int
    error: str | None


def check_image(image: SourceImage) -> CheckedImage:
    """Read, hash and fully decode one image; a decode failure is recorded, not raised."""
    try:
        data = image.read()
    except OSError as error:
        return CheckedImage(image, "", 0, 0, f"unreadable: {error}")
    digest = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as decoded:
                if decoded.width * decoded.height > IMAGE_MAX_PIXELS:
                    raise ValueError(
                        f"{decoded.width}x{decoded.height} pixels is more than {IMAGE_MAX_PIXELS} "
                        "(decoding it would take too much memory)"
                    )
                decoded.load()  # a full decode: header-only checks miss truncated JPEGs
                width, height = decoded.size
    except Exception as error:  # noqa: BLE001 - PIL raises many types for bad input; all mean "skip this file"
        return CheckedImage(image, digest, 0, 0, f"not a decodable image: {error}")
    return CheckedImage(image, digest, width, height, None)


def check_images(scanned: ScannedSource, progress: StageProgress | None = None) -> list[CheckedImage]:
    total = len(scanned.images)
    checked: list[CheckedImage] = []
    for index, image in enumerate(scanned.images, 1):
        checked.append(check_image(image))
        if progress is not None:
            progress("hashing and validating", index, total)
    return checked


def content_hash(
    scanned: ScannedSource,
    checked: list[CheckedImage],
    *,
    kind: str,
    min_images: int,
    align: str | None = None,
) -> str:
    """SHA-256 of what defines the version: kind, format, minimum, each (path, identity, sha256), pairs,
    and the aligner (``name@version``) when the images are aligned at registration."""
    digest = hashlib.sha256()
    digest.update(
        f"facefleet-dataset-v1\nkind={kind}\nformat={scanned.format}\nmin_images={min_images}\n".encode()
    )
    if align is not None:
        digest.update(f"align={align}\n".encode())
    for line in sorted(f"{item.source.relpath}\t{item.source.identity}\t{item.sha256}" for item in checked):
        digest.update(line.encode("utf-8", "surrogateescape") + b"\n")
    for relpath, read_points in sorted(scanned.landmarks.items()):
        points_hash = hashlib.sha256(read_points()).hexdigest()
        digest.update(f"points\t{relpath}\t{points_hash}\n".encode("utf-8", "surrogateescape"))
    for left, right, is_same in scanned.pairs or []:
        digest.update(f"pair\t{left}\t{right}\t{int(is_same)}\n".encode("utf-8", "surrogateescape"))
    if scanned.pair_folds is not None:  # declared folds define the protocol; absent, digests are as before
        digest.update(("folds\t" + ",".join(map(str, scanned.pair_folds)) + "\n").encode())
    return digest.hexdigest()


@dataclass
class ValidatedContent:
    """What will be packed: kept images (label order), kept pairs (indices into ``images``), the report."""

    images: list[CheckedImage]
    labels: dict[str, int]
    pairs: list[tuple[int, int, bool]]
    report: ValidationReport
    pair_folds: list[int] | None = None  # the declared fold of each kept pair (LFW header), else None


def _duplicates(images: list[CheckedImage]) -> list[DuplicateGroup]:
    by_hash: dict[str, list[str]] = defaultdict(list)
    for item in images:
        by_hash[item.sha256].append(item.source.relpath)
    return [
        DuplicateGroup(sha256=sha, paths=paths) for sha, paths in sorted(by_hash.items()) if len(paths) > 1
    ]


def _keep_identities(
    good: list[CheckedImage], min_images: int
) -> tuple[list[CheckedImage], list[SmallIdentity]]:
    counts = Counter(item.source.identity for item in good)
    small = sorted(identity for identity, count in counts.items() if count < min_images)
    dropped = set(small)
    kept = [item for item in good if item.source.identity not in dropped]
    return kept, [SmallIdentity(identity=identity, images=counts[identity]) for identity in small]


def _identity_order(identity: str) -> tuple[int, int | str]:
    """Numeric identities (RecordIO labels) sort as numbers, names as text."""
    # ASCII digits only: str.isdigit() also accepts a folder named '²', which int() refuses.
    return (0, int(identity)) if identity.isascii() and identity.isdigit() else (1, identity)


def _pairs(
    scanned: ScannedSource, kept: list[CheckedImage]
) -> tuple[list[tuple[int, int, bool]], list[str], list[int] | None]:
    """Kept pairs (indices into ``kept``), the dropped ones' reasons, and the kept pairs' declared folds."""
    position = {item.source.relpath: index for index, item in enumerate(kept)}
    pairs: list[tuple[int, int, bool]] = []
    dropped: list[str] = []
    declared = scanned.pair_folds
    folds: list[int] = []
    for index, (left, right, is_same) in enumerate(scanned.pairs or []):
        if left in position and right in position:
            pairs.append((position[left], position[right], is_same))
            if declared is not None:
                folds.append(declared[index])
        else:
            dropped.append(f"{left} {right}: an image is missing or could not be decoded")
    return pairs, dropped, (folds if declared is not None and len(set(folds)) >= 2 else None)


def validate(
    scanned: ScannedSource,
    checked: list[CheckedImage],
    *,
    kind: str,
    min_images: int,
    digest: str,
    ignored: list[str],
) -> ValidatedContent:
    """Apply the policy to checked images; raise DatasetInvalidError when nothing usable remains."""
    good = [item for item in checked if item.error is None]
    corrupt = [
        ProblemFile(path=item.source.relpath, reason=item.error or "") for item in checked if item.error
    ]
    all_ignored = [*ignored, *scanned.ignored]
    small: list[SmallIdentity] = []

    def invalid(message: str) -> DatasetInvalidError:
        # The report of what was found goes with the error, so the client sees why nothing was usable.
        report = build_report(
            scanned,
            [],
            {},
            kind=kind,
            corrupt=corrupt,
            small=small,
            pairs=[],
            dropped_pairs=[],
            ignored=all_ignored,
            candidates=len(checked),
        )
        return DatasetInvalidError(message, content_hash=digest, report=report)

    if not checked and not all_ignored:
        raise invalid("the source holds no files; give <identity>/<image> folders with images")
    if not good:
        hint = (
            f"; e.g. {corrupt[0].path}: {corrupt[0].reason}"
            if corrupt
            else (f"; ignored e.g. {all_ignored[0]}" if all_ignored else "")
        )
        raise invalid(
            f"no usable images found ({len(checked)} image files, {len(all_ignored)} other entries){hint}. "
            "Expected <identity>/<image> folders, a RecordIO pair, pairs.txt + folders or a .bin"
        )
    kept = good
    if kind == "train":
        kept, small = _keep_identities(good, min_images)
        if not kept:
            raise invalid(
                f"no identity has at least {min_images} usable images (largest has "
                f"{max(s.images for s in small)}); lower min_images_per_identity or add images"
            )
    identities = sorted({item.source.identity for item in kept}, key=_identity_order)
    labels = {identity: label for label, identity in enumerate(identities)}
    kept.sort(key=lambda item: (labels[item.source.identity], item.source.relpath))
    pairs, dropped_pairs, pair_folds = _pairs(scanned, kept)
    if kind == "verification" and not pairs:
        raise invalid("no verification pair has both images usable; check pairs.txt and the image names")
    report = build_report(
        scanned,
        kept,
        labels,
        kind=kind,
        corrupt=corrupt,
        small=small,
        pairs=pairs,
        dropped_pairs=dropped_pairs,
        ignored=all_ignored,
        candidates=len(checked),
    )
    return ValidatedContent(kept, labels, pairs, report, pair_folds)


def build_report(
    scanned: ScannedSource,
    kept: list[CheckedImage],
    labels: dict[str, int],
    *,
    kind: str,
    corrupt: list[ProblemFile],
    small: list[SmallIdentity],
    pairs: list[tuple[int, int, bool]],
    dropped_pairs: list[str],
    ignored: list[str],
    candidates: int,
) -> ValidationReport:
    per_identity = Counter(item.source.identity for item in kept)
    histogram = Counter(per_identity.values())
    sizes = Counter(f"{item.width}x{item.height}" for item in kept)
    return ValidationReport(
        format=scanned.format,
        kind=kind,
        identity_count=len(labels) if kind == "train" else len(per_identity),
        image_count=len(kept),
        pair_count=len(pairs),
        candidate_images=candidates,
        same_pairs=sum(1 for pair in pairs if pair[2]),
        images_per_identity={str(count): identities for count, identities in sorted(histogram.items())},
        min_images_per_identity_found=min(per_identity.values(), default=0),
        max_images_per_identity_found=max(per_identity.values(), default=0),
        image_sizes=dict(sizes.most_common(20)),
        min_width=min((item.width for item in kept), default=0),
        min_height=min((item.height for item in kept), default=0),
        max_width=max((item.width for item in kept), default=0),
        max_height=max((item.height for item in kept), default=0),
        corrupt_count=len(corrupt),
        corrupt=corrupt[:MAX_LISTED],
        small_identity_count=len(small),
        small_identities=small[:MAX_LISTED],
        duplicates=_duplicates(kept)[:MAX_LISTED],
        dropped_pair_count=len(dropped_pairs),
        dropped_pairs=dropped_pairs[:MAX_LISTED],
        ignored_count=len(ignored),
        ignored=ignored[:MAX_LISTED],
        properties=scanned.properties,
    )
