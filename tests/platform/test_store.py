"""Object stores (local folder and S3 over HTTP): round trips, atomicity, listing, key validation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from facefleet.platform.store import InvalidKeyError, ObjectNotFoundError, ObjectStore, validate_key
from facefleet.platform.store.local import LocalStore

BAD_KEYS = ["../escape", "a/../../b", "/etc/passwd", "a//b", "a/./b", "", "a\\b", "C:/x", "trailing/"]


def test_put_get_bytes_and_files(store: ObjectStore, tmp_path: Path) -> None:
    store.put_bytes("runs/1/a.bin", b"hello")
    assert store.get_bytes("runs/1/a.bin") == b"hello"
    assert store.exists("runs/1/a.bin")
    assert store.size("runs/1/a.bin") == 5
    source = tmp_path / "src.bin"
    source.write_bytes(os.urandom(3 << 20))
    store.put_file("models/m/1/model.onnx", source)
    target = tmp_path / "out" / "copy.bin"
    store.get_file("models/m/1/model.onnx", target)
    assert target.read_bytes() == source.read_bytes()
    assert b"".join(store.iter_chunks("models/m/1/model.onnx", 1 << 20)) == source.read_bytes()
    with store.open_stream("runs/1/a.bin") as stream:
        assert stream.read() == b"hello"


def test_list_by_prefix_and_delete(store: ObjectStore) -> None:
    for key in ["datasets/a/1/x", "datasets/a/1/y", "datasets/b/1/z", "models/m/1/card"]:
        store.put_bytes(key, b"1")
    assert store.list("datasets/a/") == ["datasets/a/1/x", "datasets/a/1/y"]
    assert len(store.list()) == 4
    store.delete("datasets/a/1/x")
    store.delete("datasets/a/1/x")  # deleting a missing key is not an error
    assert not store.exists("datasets/a/1/x")
    assert store.delete_prefix("datasets/") == 2
    assert store.list("datasets/") == []


def test_missing_object_is_a_clear_error(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFoundError, match="nope"):
        store.get_bytes("nope")
    with pytest.raises(ObjectNotFoundError):
        store.get_file("nope", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert not store.exists("nope")


@pytest.mark.parametrize("key", BAD_KEYS)
def test_keys_escaping_the_store_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidKeyError):
        store.put_bytes(key, b"x")
    with pytest.raises(InvalidKeyError):
        store.get_bytes(key)


def test_validate_key_message_says_what_to_fix() -> None:
    with pytest.raises(InvalidKeyError, match="'..' segments"):
        validate_key("a/../b")
    with pytest.raises(InvalidKeyError, match="absolute"):
        validate_key("/abs")
    assert validate_key("datasets/faces/3/shards/00000.tar") == "datasets/faces/3/shards/00000.tar"


def test_local_store_write_is_atomic(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    store.put_bytes("k", b"old")

    class Boom(Exception):
        pass

    def failing_writer(handle) -> None:  # type: ignore[no-untyped-def]
        handle.write(b"half")
        raise Boom

    with pytest.raises(Boom):
        store._atomic_write("k", failing_writer)
    assert store.get_bytes("k") == b"old"  # readers never see the half object
    assert store.list() == ["k"]  # and no temp file is left behind


def test_local_store_refuses_symlink_escape(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    store = LocalStore(tmp_path / "root")
    (tmp_path / "root" / "link").symlink_to(outside)
    with pytest.raises(InvalidKeyError, match="outside the store root"):
        store.put_bytes("link/evil", b"x")
    assert not (outside / "evil").exists()


def test_s3_presigned_url_downloads(s3_server) -> None:  # type: ignore[no-untyped-def]
    import httpx

    from facefleet.platform.store.s3 import S3Store

    store = S3Store(s3_server.make_bucket("presign"), "p", endpoint_url=s3_server.endpoint_url)
    store.put_bytes("models/m/1/model_card.json", b"{}")
    url = store.presigned_url("models/m/1/model_card.json")
    assert url is not None
    assert httpx.get(url).content == b"{}"


def test_local_store_has_no_presigned_url(local_store: ObjectStore) -> None:
    local_store.put_bytes("a", b"1")
    assert local_store.presigned_url("a") is None  # the API streams the bytes instead
