"""What a ``kind: distill`` run needs checked and pinned before it is queued: its teacher (a registered
embedding model, resolved from ``name@version`` or ``name@alias`` and read from its card) and its inspection
sets (dataset versions of format ``inspection``). Every refusal is an InvalidInputError (422) naming the
field.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from pydantic import ValidationError
from sqlalchemy.orm import Session

from facefleet.platform.db.models import Dataset, DatasetVersion, RunDataset
from facefleet.platform.errors import FacefleetError, InvalidInputError, NotFoundError
from facefleet.platform.models.card import ModelCard
from facefleet.platform.models.service import CARD_FILE, get_model_version, version_prefix
from facefleet.platform.runs.schemas import TeacherRef, TrainingConfig

INSPECTION_FORMAT = "inspection"
TEACHER_FIELD, INSPECTION_FIELD = "distill.teacher", "distill.inspection_sets"
WEIGHTS_FILE = "model.safetensors"


def parse_teacher_ref(text: str) -> tuple[str, str]:
    """``name@version`` or ``name@alias`` -> (name, version or alias)."""
    name, sep, version = text.strip().partition("@")
    if not sep or not name or not version or not re.fullmatch(r"[A-Za-z0-9_.-]+", version):
        raise InvalidInputError(
            f"distill.teacher {text!r}: name a registered model as name@version (e.g. facefleet@3) or "
            "name@alias (e.g. facefleet@production)",
            field=TEACHER_FIELD,
        )
    return name, version


def resolve_teacher(session: Session, ref: str) -> TeacherRef:
    """The teacher's pinned reference, from its registry row and its card; 422 when it cannot teach."""
    from facefleet.nn.backbones import list_backbones
    from facefleet.platform.store import get_store

    name, version = parse_teacher_ref(ref)
    try:
        model = get_model_version(session, name, version)
    except NotFoundError as error:
        raise InvalidInputError(
            f"distill.teacher {ref!r}: {error.message}; list models with `facefleet models list`",
            field=TEACHER_FIELD,
        ) from None
    label = f"{model.name}@{model.version}"
    try:
        card_bytes = get_store().get_bytes(f"{version_prefix(model.name, model.version)}/{CARD_FILE}")
        card = ModelCard.model_validate_json(card_bytes)
    except (FacefleetError, OSError, KeyError, ValidationError) as error:
        raise InvalidInputError(
            f"distill.teacher {label}: its model card cannot be read ({type(error).__name__})",
            field=TEACHER_FIELD,
        ) from None
    if hashlib.sha256(card_bytes).hexdigest() != model.card_sha256:
        raise InvalidInputError(
            f"distill.teacher {label}: its model card does not match the registry's SHA-256",
            field=TEACHER_FIELD,
        )
    if card.kind != "embedding":
        raise InvalidInputError(
            f"distill.teacher {label} is a {card.kind} model; a teacher must be an embedding "
            "(face recognition) model",
            field=TEACHER_FIELD,
        )
    if WEIGHTS_FILE not in model.artifacts:
        raise InvalidInputError(f"distill.teacher {label} has no {WEIGHTS_FILE}", field=TEACHER_FIELD)
    if card.architecture.backbone not in list_backbones():
        raise InvalidInputError(
            f"distill.teacher {label}: its backbone {card.architecture.backbone!r} is not known to this "
            "facefleet",
            field=TEACHER_FIELD,
        )
    kwargs = {k: v for k, v in card.architecture.kwargs.items() if k not in ("embedding_dim", "input_size")}
    return TeacherRef(
        name=model.name,
        version=model.version,
        card_sha256=model.card_sha256,
        backbone=card.architecture.backbone,
        kwargs=kwargs,
        input_size=card.input.size,
        embedding_dim=card.embedding_dim,
        threshold=max(-1.0, min(1.0, float(card.threshold))),
    )


def resolve_inspection_set(session: Session, ref: str) -> DatasetVersion:
    """A ready dataset version of format ``inspection`` with at least one pair."""
    from facefleet.platform.runs.datasets import resolve_dataset_version

    try:
        version = resolve_dataset_version(session, ref)
    except (NotFoundError, InvalidInputError) as error:
        raise InvalidInputError(f"distill.inspection_sets: {error.message}", field=INSPECTION_FIELD) from None
    dataset = session.get(Dataset, version.dataset_id)
    assert dataset is not None
    label = f"{dataset.name}:{version.version}"
    if version.status != "ready":
        raise InvalidInputError(
            f"distill.inspection_sets: {label} is {version.status}, not ready", field=INSPECTION_FIELD
        )
    kind = (version.report or {}).get("kind")
    if version.format != INSPECTION_FORMAT or kind != INSPECTION_FORMAT:
        raise InvalidInputError(
            f"distill.inspection_sets: {label} is a {dataset.kind} dataset (format {version.format}), not an "
            "inspection set; build one from labelled attempts",
            field=INSPECTION_FIELD,
        )
    if version.pair_count < 1 or not version.manifest_key:
        raise InvalidInputError(
            f"distill.inspection_sets: {label} holds no labelled attempts", field=INSPECTION_FIELD
        )
    return version


def resolve_distill_inputs(
    session: Session, config: TrainingConfig
) -> tuple[TrainingConfig, list[DatasetVersion]]:
    """The config with its teacher pinned (version, card hash, threshold) and its inspection sets pinned
    (``name:version``), and the inspection versions; refuses whatever cannot run."""
    from facefleet.nn.backbones import list_backbones

    if config.backbone not in list_backbones():
        raise InvalidInputError(
            f"unknown student backbone {config.backbone!r}; choose one of {', '.join(list_backbones())}",
            field="backbone",
        )
    if config.biometric.enabled or config.head.sharded:
        raise InvalidInputError(
            "a distill run trains no identity head: set biometric.enabled=false and head.sharded=false",
            field="biometric.enabled" if config.biometric.enabled else "head.sharded",
        )
    teacher = resolve_teacher(session, config.distill.teacher)
    versions = [resolve_inspection_set(session, ref) for ref in config.distill.inspection_sets]
    if len({v.id for v in versions}) != len(versions):
        raise InvalidInputError("the same inspection set is listed twice", field=INSPECTION_FIELD)
    pinned = []
    for version in versions:
        dataset = session.get(Dataset, version.dataset_id)
        assert dataset is not None
        pinned.append(f"{dataset.name}:{version.version}")
    distill = config.distill.model_copy(
        update={
            "teacher": f"{teacher.name}@{teacher.version}",
            "inspection_sets": pinned,
            "resolved_teacher": teacher,
        }
    )
    update: dict[str, object] = {"distill": distill}
    if config.embedding_dim is None:
        update["embedding_dim"] = teacher.embedding_dim  # no projection needed: the teacher's size
    return config.model_copy(update=update), versions


def inspection_rows(versions: Sequence[DatasetVersion], start: int) -> list[RunDataset]:
    """The run's inspection sets as run-dataset rows (role ``inspection``), after its other datasets."""
    return [
        RunDataset(position=position, role="inspection", dataset_version_id=version.id)
        for position, version in enumerate(versions, start=start)
    ]
