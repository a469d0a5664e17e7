"""kind=landmarks: HELEN photos + .pts are checked, split and boxed; bad markups are refused, file named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from facefleet.platform.datasets import service
from facefleet.platform.datasets.landmark_data import read_landmarks, split_of
from facefleet.platform.errors import InvalidInputError
from facefleet.platform.store import ObjectStore
from tests.faces.subsets import helen_subset


def test_register_a_landmarks_dataset(
    sqlite_engine: Engine, local_store: ObjectStore, tmp_path: Path
) -> None:
    folder = helen_subset(tmp_path / "helen", count=3)
    (folder / "notes.txt").write_text("not data")
    with Session(sqlite_engine, expire_on_commit=False) as session:
        version = service.register_dataset_version(
            session, local_store, name="helen", source=folder, kind="landmarks"
        )
        session.commit()
    assert (version.status, version.image_count, version.format) == ("ready", 3, "landmarks")
    report = version.report["landmarks"]
    assert report["faces"] == 3 and report["train_faces"] + report["test_faces"] == 3
    table = read_landmarks(local_store, "helen", 1).to_pylist()
    assert [row["split"] for row in table] == [split_of(row["member"]) for row in table]
    for row in table:
        five = np.asarray(row["points"]).reshape(5, 2)
        x1, y1, x2, y2 = row["box"]
        assert row["box_source"] == "detector"
        assert ((five[:, 0] > x1) & (five[:, 0] < x2) & (five[:, 1] > y1) & (five[:, 1] < y2)).all()
        assert five[0, 0] < five[1, 0]  # left eye left of the right eye
    assert any("notes.txt" in entry for entry in version.report["ignored"])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda lines: lines[:-1], "67 points; expected 68"),
        (lambda lines: ["nan 3.0", *lines[1:]], "NaN"),
        (lambda lines: ["-50.0 10.0", *lines[1:]], r"point 0 \(-50.0, 10.0\) lies outside"),
    ],
)
def test_bad_markups_are_refused_naming_the_file(
    sqlite_engine: Engine, local_store: ObjectStore, tmp_path: Path, mutate: object, message: str
) -> None:
    folder = helen_subset(tmp_path / "helen", count=2)
    victim = sorted(folder.glob("*.pts"))[1]
    lines = victim.read_text().splitlines()
    victim.write_text("\n".join(mutate(lines)) + "\n")  # type: ignore[operator]
    with Session(sqlite_engine, expire_on_commit=False) as session:
        with pytest.raises(InvalidInputError, match=message) as caught:
            service.register_dataset_version(
                session, local_store, name="helen", source=folder, kind="landmarks"
            )
        assert f"landmark file {victim.name}" in str(caught.value)
    assert local_store.list("datasets/") == []
