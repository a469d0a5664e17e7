"""Model registry: upload a model's artifacts, sign its card, number its versions, move its aliases.

``move_alias_audited`` is the use case behind promotion (API and CLI): the move, its audit event and, for
``production``, the ``model.promoted`` notification."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import Connection, func, select
from sqlalchemy.orm import Session

from facefleet.platform import audit, notifications
from facefleet.platform.db.base import DB_INT_MAX, utcnow
from facefleet.platform.db.models import ModelAlias, ModelVersion
from facefleet.platform.errors import InvalidInputError, NotFoundError
from facefleet.platform.models.card import ArtifactInfo, ModelCard
from facefleet.platform.models.schemas import ModelSummary, ModelVersionView
from facefleet.platform.signing import sign_bytes
from facefleet.platform.store import ObjectStore

CARD_FILE = "model_card.json"
SIGNATURE_FILE = "model_card.sig"
ALIAS_PATTERN = r"^[a-z][a-z0-9_-]{0,63}$"
PRODUCTION = "production"


def version_prefix(name: str, version: int) -> str:
    return f"models/{name}/{version}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _next_version(session: Session, name: str) -> int:
    return (
        int(session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.name == name)) or 0) + 1
    )


def register_model_version(
    session: Session,
    store: ObjectStore,
    *,
    name: str,
    run_id: int | None,
    artifacts_dir: Path,
    card: ModelCard,
    alias: str | None = "candidate",
) -> ModelVersion:
    """Upload every artifact the card lists (SHA-256 checked), then the signed card; record it."""
    version = _next_version(session, name)
    card = card.model_copy(
        update={
            "name": name,
            "version": version,
            "run_id": run_id,
            "created_at": card.created_at or utcnow().isoformat(),
        }
    )
    prefix = version_prefix(name, version)
    paths = {
        file_name: _checked_artifact(Path(artifacts_dir), file_name, info.sha256)
        for file_name, info in card.artifacts.items()
    }  # every hash is checked before any upload
    artifacts: dict[str, dict[str, object]] = {}
    for file_name, path in paths.items():
        store.put_file(f"{prefix}/{file_name}", path)
        artifacts[file_name] = {
            "key": f"{prefix}/{file_name}",
            "sha256": card.artifacts[file_name].sha256,
            "size": path.stat().st_size,
        }
    card_bytes = card.to_bytes()
    signature = sign_bytes(card_bytes)
    store.put_bytes(f"{prefix}/{CARD_FILE}", card_bytes, content_type="application/json")
    store.put_bytes(f"{prefix}/{SIGNATURE_FILE}", signature.encode(), content_type="text/plain")
    card_sha = hashlib.sha256(card_bytes).hexdigest()
    artifacts[CARD_FILE] = {"key": f"{prefix}/{CARD_FILE}", "sha256": card_sha, "size": len(card_bytes)}
    model = ModelVersion(
        name=name,
        version=version,
        run_id=run_id,
        artifacts=artifacts,
        card_sha256=card_sha,
        signature=signature,
        eval_summary=card.metrics,
    )
    session.add(model)
    session.flush()
    if alias:
        set_alias(session, name, alias, version)
    return model


def _checked_artifact(folder: Path, file_name: str, expected_sha256: str) -> Path:
    path = folder / file_name
    if path.parent != folder or not path.is_file():
        raise InvalidInputError(f"artifact {file_name!r} is not a file in {folder}")
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise InvalidInputError(f"artifact {file_name} has SHA-256 {actual}, the card says {expected_sha256}")
    return path


def artifact_info(path: Path) -> ArtifactInfo:
    return ArtifactInfo(sha256=sha256_file(path), size=path.stat().st_size)


def get_model_version(session: Session, name: str, version_or_alias: str | int) -> ModelVersion:
    """A version by number (``3``) or alias (``production``); ``latest`` is the highest number."""
    text = str(version_or_alias)
    query = select(ModelVersion).where(ModelVersion.name == name)
    if re.fullmatch(r"[0-9]+", text):  # ASCII only: str.isdigit() also accepts '²', which int() refuses
        # A number too large for the database cannot be a version; 0 finds nothing, like it.
        number = int(text) if len(text) <= 10 and int(text) <= DB_INT_MAX else 0
        query = query.where(ModelVersion.version == number)
    elif text == "latest":
        query = query.order_by(ModelVersion.version.desc()).limit(1)
    else:
        query = query.join(ModelAlias, ModelAlias.model_version_id == ModelVersion.id).where(
            ModelAlias.name == name, ModelAlias.alias == text
        )
    found = session.scalars(query).first()
    if found is None:
        raise NotFoundError(f"model {name!r} has no version or alias {text!r}")
    return found


def set_alias(session: Session, name: str, alias: str, version: int | str) -> ModelAlias:
    """Point ``alias`` (e.g. ``production``: a promotion) at a version of model ``name``."""
    if not re.match(ALIAS_PATTERN, alias) or alias.isdigit() or alias == "latest":
        raise InvalidInputError(
            f"alias {alias!r} must be lower-case letters, digits, - or _, starting with a "
            "letter, and not 'latest'",
            field="alias",
        )
    target = get_model_version(session, name, version)
    row = session.get(ModelAlias, (name, alias))
    if row is None:
        row = ModelAlias(name=name, alias=alias, model_version_id=target.id)
        session.add(row)
    else:
        row.model_version_id, row.updated_at = target.id, utcnow()
    session.flush()
    return row


def version_view(session: Session, model: ModelVersion) -> ModelVersionView:
    return version_views(session, [model])[0]


def version_views(session: Session, models: Sequence[ModelVersion]) -> list[ModelVersionView]:
    """Views of ``models`` with their aliases, in one query for the whole list (no N+1)."""
    aliases: dict[int, list[str]] = {model.id: [] for model in models}
    rows = session.execute(
        select(ModelAlias.model_version_id, ModelAlias.alias)
        .where(ModelAlias.model_version_id.in_(list(aliases)))
        .order_by(ModelAlias.alias)
    )
    for model_version_id, alias in rows:
        aliases[model_version_id].append(alias)
    return [
        ModelVersionView.model_validate(model).model_copy(update={"aliases": aliases[model.id]})
        for model in models
    ]


def list_versions(session: Session, name: str) -> list[ModelVersion]:
    versions = list(
        session.scalars(
            select(ModelVersion).where(ModelVersion.name == name).order_by(ModelVersion.version.desc())
        )
    )
    if not versions:
        raise NotFoundError(f"no model named {name!r}")
    return versions


# Built once (so compiled once): GET /v1/models runs both on a plain connection, in one snapshot.
_MODELS = (
    select(ModelVersion.name, func.max(ModelVersion.version), func.count())
    .group_by(ModelVersion.name)
    .order_by(ModelVersion.name)
)
_ALIASES = select(ModelAlias.name, ModelAlias.alias, ModelVersion.version).join(
    ModelVersion, ModelAlias.model_version_id == ModelVersion.id
)


def list_models(session: Session | Connection) -> list[ModelSummary]:
    """Every model with its latest version, number of versions and aliases (two statements)."""
    rows = session.execute(_MODELS).all()
    aliases: dict[str, dict[str, int]] = {name: {} for name, _, _ in rows}
    alias_rows = session.execute(_ALIASES)
    for name, alias, version in alias_rows:
        aliases.setdefault(name, {})[alias] = version
    return [
        ModelSummary(name=name, latest_version=latest, versions=count, aliases=aliases[name])
        for name, latest, count in rows
    ]


def move_alias_audited(
    session: Session, name: str, alias: str, version_or_alias: str | int, *, actor: str
) -> ModelVersionView:
    """Point ``alias`` at a version of ``name`` and record it; moving ``production`` is a promotion, audited
    as ``models.promote`` and announced with a ``model.promoted`` notification when the version changes."""
    model = get_model_version(session, name, version_or_alias)
    try:
        previous: int | None = get_model_version(session, name, alias).version
    except NotFoundError:
        previous = None
    set_alias(session, name, alias, model.version)
    details = {"alias": alias, "from": previous, "to": model.version}
    action = "models.promote" if alias == PRODUCTION else "models.alias"
    audit.record(session, actor, action, "model", f"{name}:{model.version}", details)
    if alias == PRODUCTION and previous != model.version:
        notifications.enqueue(
            session,
            event="model.promoted",
            payload={
                "summary": f"{name} v{model.version} promoted to production by {actor}",
                "model": name,
                **details,
            },
        )
    return version_view(session, model)
