"""A write whose database commit fails leaves nothing in the store: the objects an attempt upload or a
dataset upload wrote before the commit are deleted when the transaction ends without committing."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from facefleet.platform.db.models import Attempt, Dataset, DatasetVersion
from tests.api.conftest import Api, make_imagefolder
from tests.api.test_api_inspections import _collect, _deployed, _upload


@pytest.fixture
def failing_commit(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every commit flushes (the rows reach the database) and then fails, as a lost connection would."""
    real = Session.commit

    def commit(self: Session) -> None:
        self.flush()
        raise OperationalError("COMMIT", {}, Exception("the server closed the connection"))

    monkeypatch.setattr(Session, "commit", commit)
    yield
    monkeypatch.setattr(Session, "commit", real)


def _count(api: Api, model: type) -> int:
    with api.session() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_an_attempt_whose_commit_fails_leaves_no_crops(api: Api, request: pytest.FixtureRequest) -> None:
    (device,), version_id = _deployed(api)
    _collect(api, attempts="all")
    assert _upload(api, device, version_id).status_code == 201  # one that commits: its crops stay
    kept = api.store.list("attempts/")
    assert len(kept) == 2
    request.getfixturevalue("failing_commit")
    failed = _upload(api, device, version_id, seed=7)
    assert failed.status_code >= 500 and "Traceback" not in failed.text
    assert api.store.list("attempts/") == kept
    assert _count(api, Attempt) == 1


def test_a_dataset_upload_whose_commit_fails_leaves_no_objects(
    api: Api, request: pytest.FixtureRequest
) -> None:
    folder = make_imagefolder(api.tmp / "up", identities=2, seed=3)
    archive = shutil.make_archive(str(api.tmp / "faces"), "zip", folder)
    request.getfixturevalue("failing_commit")
    with open(archive, "rb") as handle:
        failed = api.client.post(
            "/v1/datasets/upload",
            headers=api.admin,
            data={"name": "uploaded"},
            files={"file": ("faces.zip", handle, "application/zip")},
        )
    assert failed.status_code >= 500 and "Traceback" not in failed.text
    assert api.store.list("datasets/") == []
    assert (_count(api, Dataset), _count(api, DatasetVersion)) == (0, 0)


def test_a_commit_that_reached_the_database_keeps_its_objects(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client saw the commit fail, but the database had committed (the reply was lost): the rows are
    there, so the undo must leave their objects."""
    (device,), version_id = _deployed(api)
    _collect(api, attempts="all")
    dialect = api.engine.dialect
    real = dialect.do_commit

    def do_commit(dbapi_connection: Any) -> None:
        real(dbapi_connection)
        raise dialect.loaded_dbapi.OperationalError("the connection dropped before the reply")

    monkeypatch.setattr(dialect, "do_commit", do_commit)
    assert _upload(api, device, version_id).status_code >= 500
    folder = make_imagefolder(api.tmp / "up", identities=2, seed=3)
    archive = shutil.make_archive(str(api.tmp / "faces"), "zip", folder)
    with open(archive, "rb") as handle:
        files = {"file": ("faces.zip", handle, "application/zip")}
        uploaded = api.client.post("/v1/datasets/upload", headers=api.admin, data={"name": "up"}, files=files)
    assert uploaded.status_code >= 500
    monkeypatch.setattr(dialect, "do_commit", real)
    with api.session() as session:
        attempt = session.scalars(select(Attempt)).one()
        version = session.scalars(select(DatasetVersion)).one()
    assert api.store.exists(attempt.probe_key) and api.store.exists(attempt.reference_key)
    assert version.manifest_key is not None and api.store.exists(version.manifest_key)
