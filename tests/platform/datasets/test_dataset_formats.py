"""Each source format and each bad input, on small generated fixtures (SQLite + local store)."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import boto3
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from facefleet.platform.datasets import service, shards
from facefleet.platform.datasets.verification import VerificationFormatError, load_bin
from facefleet.platform.db.models import DatasetVersion
from facefleet.platform.errors import InvalidInputError
from facefleet.platform.settings import get_settings
from facefleet.platform.store import ObjectStore
from tests.platform.datasets.conftest import (
    image_bytes,
    make_bin,
    make_imagefolder,
    make_lfw_folder,
    make_recordio,
)


def _find_orl() -> Path:
    """The real ORL faces: FACEFLEET_BENCHDATA, ../shared beside the checkout, or /work/shared."""
    candidates = [Path(os.environ["FACEFLEET_BENCHDATA"])] if os.environ.get("FACEFLEET_BENCHDATA") else []
    candidates += [
        Path(__file__).resolve().parents[3].parent / "shared" / "benchdata",
        Path("/work/shared/benchdata"),
    ]
    for folder in candidates:
        if (folder / "orl_faces").is_dir():
            return folder / "orl_faces"
    return candidates[0] / "orl_faces"


ORL = _find_orl()


def register(session: Session, store: ObjectStore, source: Path | str, **kwargs: object) -> DatasetVersion:
    kwargs.setdefault("name", "ds")
    return service.register_dataset_version(session, store, source=source, **kwargs)  # type: ignore[arg-type]


def _versions(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(DatasetVersion)) or 0)


def test_zip_and_tar_gz_archives(sqlite_session: Session, local_store: ObjectStore, tmp_path: Path) -> None:
    folder = make_imagefolder(tmp_path / "faces", identities=2, images=3)
    archive_zip = tmp_path / "faces.zip"
    with zipfile.ZipFile(archive_zip, "w") as zf:
        for path in sorted(folder.rglob("*.*")):
            zf.write(path, f"wrapper/{path.relative_to(folder)}")  # a wrapper folder, as zips often have
    upload = tmp_path / "upload-without-suffix"  # an API upload saved to a temp name: found by content
    with tarfile.open(upload, "w:gz") as tar:
        tar.add(folder, arcname=".")
    from_zip = register(sqlite_session, local_store, archive_zip, name="z")
    from_tar = register(sqlite_session, local_store, upload, name="t")
    assert (from_zip.image_count, from_zip.identity_count) == (6, 2)
    assert (from_tar.image_count, from_tar.identity_count) == (6, 2)
    assert from_zip.content_hash == from_tar.content_hash  # same content, whatever the container


def test_truncated_jpeg_and_small_identities_are_skipped_and_listed(
    sqlite_session: Session, local_store: ObjectStore, tmp_path: Path
) -> None:
    folder = make_imagefolder(tmp_path / "faces", identities=3, images=3)
    (folder / "id0" / "bad.jpg").write_bytes(image_bytes(77, size=(64, 64))[:200])
    (folder / "id0" / "notes.txt").write_text("not an image")
    (folder / "loner").mkdir()
    (folder / "loner" / "only.jpg").write_bytes(image_bytes(5))
    (folder / "id2" / "copy.jpg").write_bytes((folder / "id1" / "0.jpg").read_bytes())
    version = register(sqlite_session, local_store, folder, min_images_per_identity=2)
    report = version.report
    assert [item["path"] for item in report["corrupt"]] == ["id0/bad.jpg"]
    assert report["small_identities"] == [{"identity": "loner", "images": 1}]
    assert any("id0/notes.txt" in entry for entry in report["ignored"])
    assert report["duplicates"][0]["paths"] == ["id1/0.jpg", "id2/copy.jpg"]
    assert (version.identity_count, version.image_count) == (3, 10)
    assert report["image_sizes"] == {"24x28": 10}


def test_recordio_pair(sqlite_session: Session, local_store: ObjectStore, tmp_path: Path) -> None:
    version = register(sqlite_session, local_store, make_recordio(tmp_path / "rec", [7, 7, 2, 2, 2, 11]))
    assert (version.format, version.identity_count, version.image_count) == ("recordio", 3, 6)
    table = shards.read_manifest(local_store, version.manifest_key or "")
    by_identity = dict(zip(table["identity"].to_pylist(), table["label"].to_pylist(), strict=True))
    assert by_identity == {"2": 0, "7": 1, "11": 2}  # numeric labels keep their numeric order
    assert version.report["properties"] == {"num_classes": 3, "height": 112, "width": 112}
    plain = register(
        sqlite_session,
        local_store,
        make_recordio(tmp_path / "plain", [0, 1], with_header=False),
        name="plain",
    )
    assert plain.image_count == 2


def test_recordio_with_wrong_index_is_invalid(
    sqlite_session: Session, local_store: ObjectStore, tmp_path: Path
) -> None:
    folder = make_recordio(tmp_path / "rec", [1, 2])
    (folder / "train.idx").write_text("0\t0\n1\t3\n")
    with pytest.raises(InvalidInputError, match="bad magic"):
        register(sqlite_session, local_store, folder)
    assert local_store.list("datasets/") == []


def test_lfw_pairs_folder(sqlite_session: Session, local_store: ObjectStore, tmp_path: Path) -> None:
    folder = make_lfw_folder(tmp_path / "lfw", people=4, per_person=3)
    version = register(sqlite_session, local_store, folder, kind="verification", name="lfw")
    assert (version.format, version.pair_count, version.image_count) == ("lfw_pairs", 7, 8)
    table = shards.read_manifest(local_store, version.manifest_key or "")
    members = table["member"].to_pylist()
    pairs = shards.read_pairs(local_store, f"datasets/lfw/{version.version}/pairs.parquet")
    assert (members[pairs[0][0]], members[pairs[0][1]], pairs[0][2]) == (
        "Person_A/Person_A_0001.jpg",
        "Person_A/Person_A_0002.jpg",
        True,
    )
    assert sum(1 for pair in pairs if pair[2]) == 4


@pytest.mark.parametrize("protocol", [2, 4])
def test_insightface_bin(
    sqlite_session: Session, local_store: ObjectStore, tmp_path: Path, protocol: int
) -> None:
    version = register(
        sqlite_session, local_store, make_bin(tmp_path / "lfw.bin", 5, protocol), kind="verification"
    )
    assert (version.format, version.pair_count, version.image_count) == ("insightface_bin", 5, 10)


class _RunsShell:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch PWNED",))


def test_malicious_bin_is_rejected_without_executing(
    sqlite_session: Session, local_store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.bin"
    evil.write_bytes(pickle.dumps(([image_bytes(1), _RunsShell()], [True])))
    with pytest.raises(InvalidInputError, match="system"):
        register(sqlite_session, local_store, evil, kind="verification")
    assert not (tmp_path / "PWNED").exists()
    numbers = tmp_path / "dict.bin"  # plain data of the wrong types is refused too
    numbers.write_bytes(pickle.dumps(({"a": 1}, [True])))
    with pytest.raises(VerificationFormatError, match="dict"):
        load_bin(numbers)
    assert local_store.list("datasets/") == []


def _tar_with(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w") as tar:
        good = tarfile.TarInfo("id0/0.jpg")
        payload = image_bytes(1)
        good.size = len(payload)
        tar.addfile(good, io.BytesIO(payload))
        tar.addfile(member, io.BytesIO(data) if data else None)
    return path


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_link("id0/evil.jpg", "../../../etc/passwd", tarfile.SYMTYPE), "symbolic link"),
        (_link("id0/evil.jpg", "/etc/passwd", tarfile.SYMTYPE), "symbolic link"),
        (_link("id0/hard.jpg", "../outside", tarfile.LNKTYPE), "hard link"),
        (_link("dev/null", "", tarfile.CHRTYPE), "device"),
    ],
)
def test_unsafe_tar_is_invalid(
    sqlite_session: Session, local_store: ObjectStore, tmp_path: Path, member: tarfile.TarInfo, message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        register(sqlite_session, local_store, _tar_with(tmp_path / "bad.tar", member))
    assert local_store.list("datasets/") == []


def test_zip_slip_and_absolute_paths_are_invalid(
    sqlite_session: Session, local_store: ObjectStore, tmp_path: Path
) -> None:
    for name, entry in [("slip.zip", "../../escaped.jpg"), ("abs.zip", "/tmp/facefleet-abs-escape.jpg")]:
        archive = tmp_path / name
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("id0/0.jpg", image_bytes(1))
            zf.writestr(zipfile.ZipInfo(entry), image_bytes(2))
        with pytest.raises(InvalidInputError, match="escape|absolute"):
            register(sqlite_session, local_store, archive)
    assert (
        not (tmp_path.parent / "escaped.jpg").exists() and not Path("/tmp/facefleet-abs-escape.jpg").exists()
    )
    tar_slip = tmp_path / "slip.tar"
    payload = image_bytes(3)
    with tarfile.open(tar_slip, "w") as tar:
        info = tarfile.TarInfo("../escaped.jpg")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(InvalidInputError, match="'..'"):
        register(sqlite_session, local_store, tar_slip)
    assert local_store.list("datasets/") == []


def test_symlink_escaping_a_folder_is_invalid(
    sqlite_session: Session, local_store: ObjectStore, tmp_path: Path
) -> None:
    folder = make_imagefolder(tmp_path / "faces", identities=1, images=2)
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(image_bytes(9))
    (folder / "id0" / "link.jpg").symlink_to(secret)
    with pytest.raises(InvalidInputError, match="outside the folder"):
        register(sqlite_session, local_store, folder)
    (folder / "id0" / "link.jpg").unlink()
    (folder / "id0" / "inside.jpg").symlink_to(folder / "id0" / "0.jpg")  # a link inside is fine
    assert register(sqlite_session, local_store, folder).image_count == 3


def test_folder_of_text_files_is_invalid(
    sqlite_session: Session, local_store: ObjectStore, tmp_path: Path
) -> None:
    for identity in ("a", "b"):
        (tmp_path / "texts" / identity).mkdir(parents=True)
        (tmp_path / "texts" / identity / "x.txt").write_text("hello")
        (tmp_path / "texts" / identity / "fake.jpg").write_text("not really a jpeg")
    with pytest.raises(InvalidInputError, match="no usable images"):
        register(sqlite_session, local_store, tmp_path / "texts")
    assert local_store.list("datasets/") == []


def test_s3_prefix_source(  # type: ignore[no-untyped-def]
    sqlite_session: Session,
    local_store: ObjectStore,
    tmp_path: Path,
    s3_server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bucket = s3_server.make_bucket("faces-src")
    client = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1")
    folder = make_imagefolder(tmp_path / "faces", identities=2, images=2)
    for path in folder.rglob("*.*"):
        client.put_object(
            Bucket=bucket, Key=f"incoming/faces/{path.relative_to(folder).as_posix()}", Body=path.read_bytes()
        )
    monkeypatch.setenv("FACEFLEET_S3_ENDPOINT_URL", s3_server.endpoint_url)
    get_settings.cache_clear()
    version = register(sqlite_session, local_store, f"s3://{bucket}/incoming/faces")
    assert (version.image_count, version.source_uri) == (4, f"s3://{bucket}/incoming/faces")
    with pytest.raises(InvalidInputError, match="no objects"):
        register(sqlite_session, local_store, f"s3://{bucket}/incoming/nothing-here", name="other")
    with pytest.raises(InvalidInputError, match="does not exist"):
        register(sqlite_session, local_store, "s3://no-such-bucket-xyz/faces", name="other")
    assert _versions(sqlite_session) == 1


@pytest.mark.skipif(not ORL.is_dir(), reason="real ORL faces not present (../shared/benchdata/orl_faces)")
def test_real_orl_faces(sqlite_session: Session, local_store: ObjectStore) -> None:
    version = register(sqlite_session, local_store, ORL, name="orl")
    assert (version.identity_count, version.image_count, version.report["corrupt_count"]) == (40, 400, 0)
    assert version.report["image_sizes"] == {"92x112": 400}
    assert any("README" in entry for entry in version.report["ignored"])
