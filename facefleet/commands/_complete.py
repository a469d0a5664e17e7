"""Shell completion of run ids and model names (`facefleet --install-completion` turns it on).

Completion must be quick and must never fail: it reads the server (FACEFLEET_SERVER_URL and
FACEFLEET_API_KEY) or the local database as it is (no migration), and offers nothing when neither answers.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select

LIMIT = 200


def _guarded(fetch: Callable[[], list[str]], incomplete: str) -> list[str]:
    try:
        return [value for value in fetch() if value.startswith(incomplete)]
    except Exception:  # noqa: BLE001 - a completion that cannot answer offers nothing
        return []


def _remote_items(path: str) -> list[dict[str, object]] | None:
    from facefleet.client import remote_client

    client = remote_client(None)
    if client is None:
        return None
    with client:
        return list(client.iter_pages(path, max_items=LIMIT))


def _local_values(query: object) -> list[str]:
    from sqlalchemy.orm import Session

    from facefleet.platform.db.session import make_engine
    from facefleet.platform.settings import get_settings

    engine = make_engine(get_settings().effective_database_url)
    try:
        with Session(engine) as session:
            return [str(value) for value in session.scalars(query)]  # type: ignore[call-overload]
    finally:
        engine.dispose()


def complete_run_ids(incomplete: str) -> list[str]:
    def fetch() -> list[str]:
        from facefleet.platform.db.models import Run

        items = _remote_items("/v1/runs")
        if items is not None:
            return [str(item["id"]) for item in items]
        return _local_values(select(Run.id).order_by(Run.id.desc()).limit(LIMIT))

    return _guarded(fetch, incomplete)


def complete_model_names(incomplete: str) -> list[str]:
    def fetch() -> list[str]:
        from facefleet.platform.db.models import ModelVersion

        items = _remote_items("/v1/models")
        if items is not None:
            return [str(item["name"]) for item in items]
        return _local_values(select(ModelVersion.name).distinct().order_by(ModelVersion.name).limit(LIMIT))

    return _guarded(fetch, incomplete)
