"""Pydantic schemas of the datasets domain: the validation report, requests and what the API returns."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from facefleet.platform.names import NAME_PATTERN, Name

DATASET_NAME_PATTERN = NAME_PATTERN
ALIGNER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}(@[0-9]{1,9})?$"


# Every kind a dataset can have: the three a registration takes, and ``inspection`` (labelled terminal
# attempts packed by facefleet/platform/inspections/sets.py; never registered from a source).
RegisteredKind = Literal["train", "verification", "landmarks"]
DatasetKindFilter = Literal["train", "verification", "landmarks", "inspection"]
DATASET_KINDS: tuple[str, ...] = get_args(DatasetKindFilter)


class ProblemFile(BaseModel):
    path: str
    reason: str


class SmallIdentity(BaseModel):
    identity: str
    images: int


class DuplicateGroup(BaseModel):
    sha256: str
    paths: list[str]


class AlignmentReport(BaseModel):
    """What alignment did (``--align``): counts, and the images skipped or with several faces (capped lists).

    Every image's outcome (box, points, faces found) is in ``alignment.json`` next to the shards.
    """

    aligner: str = Field(description="'mtcnn' or the landmark model's name.")
    aligner_version: str = Field(description="The aligner's version (MTCNN's weights or the model version).")
    size: int = 112
    attempted: int = 0
    aligned: int = 0
    no_face: int = 0
    several_faces: int = Field(default=0, description="Aligned images where more than one face was found.")
    no_face_images: list[ProblemFile] = Field(default_factory=list, description="Skipped: no face found.")
    several_faces_images: list[str] = Field(
        default_factory=list, description="Aligned on the chosen face (largest x most central)."
    )


class LandmarkReport(BaseModel):
    """A landmarks dataset: faces per split and where their boxes came from."""

    faces: int = 0
    train_faces: int = 0
    test_faces: int = Field(default=0, description="Held out (fixed by file name) for evaluation.")
    boxes_from_points: int = Field(
        default=0, description="MTCNN missed the face: the box was made from the points."
    )


class ValidationReport(BaseModel):
    """What validation found; stored on the version (and as JSON next to its shards)."""

    format: str
    kind: str
    identity_count: int = 0
    image_count: int = 0
    pair_count: int = 0
    same_pairs: int = 0
    candidate_images: int = Field(0, description="Image files found before validation.")
    images_per_identity: dict[str, int] = Field(
        default_factory=dict,
        description="Histogram: number of images -> number of identities with that many.",
    )
    min_images_per_identity_found: int = 0
    max_images_per_identity_found: int = 0
    image_sizes: dict[str, int] = Field(default_factory=dict, description="'WxH' -> count (20 most common).")
    min_width: int = 0
    min_height: int = 0
    max_width: int = 0
    max_height: int = 0
    corrupt_count: int = 0
    corrupt: list[ProblemFile] = Field(
        default_factory=list, description="Undecodable or truncated files (skipped)."
    )
    small_identity_count: int = 0
    small_identities: list[SmallIdentity] = Field(
        default_factory=list, description="Identities with fewer images than required (skipped)."
    )
    duplicates: list[DuplicateGroup] = Field(
        default_factory=list, description="Byte-identical images (kept)."
    )
    dropped_pair_count: int = 0
    dropped_pairs: list[str] = Field(default_factory=list)
    ignored_count: int = 0
    ignored: list[str] = Field(default_factory=list, description="Entries that are not images of the layout.")
    properties: dict[str, int] = Field(
        default_factory=dict, description="RecordIO 'property' file, when present."
    )
    alignment: AlignmentReport | None = Field(default=None, description="Present when registered with align.")
    landmarks: LandmarkReport | None = Field(default=None, description="Present for kind=landmarks.")


class RegisterRequest(BaseModel):
    """Register a dataset version from a local path or archive on the server, or an s3:// prefix."""

    model_config = ConfigDict(extra="forbid")

    name: Name = Field(description="Dataset name (letters, digits, . _ -).")
    source: str = Field(
        min_length=1,
        max_length=4096,
        description="Folder, .zip/.tar(.gz), .bin, RecordIO folder or s3://bucket/prefix; on the server "
        "only under FACEFLEET_DATASET_ROOTS.",
    )
    kind: RegisteredKind = "train"
    description: str = Field("", max_length=2000)
    tags: list[Name] = Field(default_factory=list, max_length=64)
    min_images_per_identity: int = Field(1, ge=1, le=100_000)
    align: bool = Field(False, description="Detect, locate five points and warp each image to 112x112.")
    aligner: str = Field(
        "mtcnn",
        pattern=ALIGNER_PATTERN,
        description="'mtcnn' or a landmark model of the registry: '<name>' (latest) or '<name>@<version>'.",
    )


class DatasetVersionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    dataset_id: int
    version: int
    status: str
    format: str
    source_uri: str
    identity_count: int
    image_count: int
    pair_count: int
    content_hash: str
    manifest_key: str | None
    error: str | None
    created_at: datetime


class DatasetVersionDetail(DatasetVersionOut):
    """A version with its validation report."""

    report: dict[str, Any]


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    kind: str
    description: str
    tags: list[str]
    created_at: datetime
    latest_version: int | None = Field(None, description="Highest ready version, if any.")
