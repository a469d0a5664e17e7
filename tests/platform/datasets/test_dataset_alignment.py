"""Registration with --align on real photos: aligned crops in the shards, the report, per-image outcomes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from facefleet.cli import app
from facefleet.platform.datasets import layout, service, shards
from facefleet.platform.errors import InvalidInputError
from facefleet.platform.store import ObjectStore
from tests.faces.subsets import celeba_pairs_folder, celeba_subset


def _member_images(store: ObjectStore, manifest_key: str) -> list[Image.Image]:
    table = shards.read_manifest(store, manifest_key)
    images = []
    for row in table.to_pylist():
        data = shards.read_range(store, row["shard"], row["offset"], row["size"])
        images.append(Image.open(io.BytesIO(data)))
    return images


def test_register_with_align_stores_aligned_crops(
    sqlite_engine: Engine, local_store: ObjectStore, tmp_path: Path
) -> None:
    folder = celeba_subset(tmp_path / "celeb", identities=2, images=3)
    with Session(sqlite_engine, expire_on_commit=False) as session:
        plain = service.register_dataset_version(session, local_store, name="celeb", source=folder)
        aligned = service.register_dataset_version(
            session, local_store, name="celeb", source=folder, align=True
        )
        session.commit()
        assert (plain.version, aligned.version) == (1, 2)  # the aligner is part of the content
        assert plain.image_count == 7 and plain.report.get("alignment") is None
        report = aligned.report["alignment"]
        assert report["aligner"] == "mtcnn" and report["aligner_version"] == "facenet-pytorch-2.6.0"
        assert (report["attempted"], report["aligned"], report["no_face"]) == (7, 6, 1)
        assert report["no_face_images"][0]["path"].endswith("zz_sky.jpg")
        assert aligned.image_count == 6 and aligned.identity_count == 2
        assert {image.size for image in _member_images(local_store, aligned.manifest_key or "")} == {
            (112, 112)
        }
        outcomes = json.loads(local_store.get_bytes(layout.alignment_key("celeb", 2)))
        assert len(outcomes) == 7
        kept = [o for o in outcomes if o["status"] == "aligned"]
        assert all(len(o["points"]) == 5 and len(o["box"]) == 4 and o["faces"] >= 1 for o in kept)
        assert sum(o["faces"] > 1 for o in kept) == report["several_faces"]
        # The same content with the same aligner is the same version (nothing aligned again).
        again = service.register_dataset_version(
            session, local_store, name="celeb", source=folder, align=True
        )
        assert again.id == aligned.id


def test_align_refuses_unknown_aligner_and_faceless_data(
    sqlite_engine: Engine, local_store: ObjectStore, tmp_path: Path
) -> None:
    folder = tmp_path / "sky" / "id0"
    folder.mkdir(parents=True)
    for index in range(2):
        Image.new("RGB", (120, 100), (10 * index, 90, 160)).save(folder / f"{index}.jpg")
    with Session(sqlite_engine, expire_on_commit=False) as session:
        with pytest.raises(InvalidInputError, match="no face found in any of the 2 images") as caught:
            service.register_dataset_version(
                session, local_store, name="sky", source=folder.parent, align=True
            )
        assert caught.value.field == "source"
        session.rollback()
        with pytest.raises(InvalidInputError, match="no landmark model named 'nomodel'") as caught:
            service.register_dataset_version(
                session, local_store, name="sky2", source=folder.parent, align=True, aligner="nomodel"
            )
        assert caught.value.field == "aligner"
        with pytest.raises(InvalidInputError, match="not valid"):
            service.register_dataset_version(
                session, local_store, name="sky3", source=folder.parent, align=True, aligner="../x"
            )


def test_verification_sets_are_aligned_the_same_way(
    sqlite_engine: Engine, local_store: ObjectStore, tmp_path: Path
) -> None:
    folder = celeba_pairs_folder(tmp_path / "pairs")
    with Session(sqlite_engine, expire_on_commit=False) as session:
        version = service.register_dataset_version(
            session, local_store, name="celeb-ver", source=folder, kind="verification", align=True
        )
        session.commit()
    assert version.pair_count == 4 and version.report["alignment"]["aligned"] == 4
    assert {image.size for image in _member_images(local_store, version.manifest_key or "")} == {(112, 112)}


def test_cli_register_align(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from facefleet.platform.settings import get_settings

    monkeypatch.setenv("FACEFLEET_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("FACEFLEET_STORE_URL", (tmp_path / "store").as_uri())
    monkeypatch.setenv("COLUMNS", "200")
    get_settings.cache_clear()
    folder = celeba_subset(tmp_path / "celeb", identities=1, images=2)
    result = CliRunner().invoke(
        app, ["datasets", "register", str(folder), "--name", "celeb", "--align", "--aligner", "mtcnn"]
    )
    assert result.exit_code == 0, result.output
    assert "celeb@1 ready: 1 identities, 2 images" in result.output
    assert (
        "aligned with mtcnn@facenet-pytorch-2.6.0: 2 of 3 images aligned, 1 without a face" in result.output
    )
