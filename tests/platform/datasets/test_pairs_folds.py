"""The folds a pairs file declares (LFW header ``folds pairs_per_class``) travel from the file through
registration (the pairs table's ``fold`` column) to the evaluation; a file without them gets none."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from facefleet.platform.datasets import layout
from facefleet.platform.datasets.service import register_dataset_version
from facefleet.platform.datasets.shards import read_pair_folds, read_pairs
from facefleet.platform.datasets.verification import declared_fold_of, read_pairs_file
from facefleet.platform.store import ObjectStore
from facefleet.workers.synthetic import generate_synthetic_datasets


def test_header_declares_folds_only_when_it_cuts_the_file() -> None:
    assert declared_fold_of(["10", "300"], 6000) == [i // 600 for i in range(6000)]
    assert declared_fold_of(["10", "300"], 5999) is None  # the header does not describe this file
    assert declared_fold_of(["1100"], 1100) is None  # pairsDevTrain.txt: a count, no folds
    assert declared_fold_of(["1", "3"], 6) is None  # one fold: nothing to hold out
    assert declared_fold_of([], 6) is None


def test_read_pairs_file_gives_each_pair_its_block(tmp_path: Path) -> None:
    lines = ["2\t1", "A\t1\t2", "A\t1\tB\t1", "B\t1\t2", "B\t2\tA\t2"]
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    pairs = read_pairs_file(tmp_path / "pairs.txt", tmp_path)
    assert [(p.is_same, p.fold) for p in pairs] == [(True, 0), (False, 0), (True, 1), (False, 1)]
    (tmp_path / "pairs.txt").write_text("\n".join(lines[1:]) + "\n")
    assert [p.fold for p in read_pairs_file(tmp_path / "pairs.txt", tmp_path)] == [None] * 4


def test_registration_stores_declared_folds_in_the_pairs_table(
    session: Session, local_store: ObjectStore, tmp_path: Path
) -> None:
    result = generate_synthetic_datasets(
        tmp_path / "synth",
        num_datasets=1,
        identities_per_dataset=2,
        images_per_identity=4,
        verification_identities=6,
        verification_pairs=40,
        image_size=32,
        seed=0,
    )
    header = result.pairs_file.read_text().splitlines()[0].split()
    assert header == ["10", "2"]
    version = register_dataset_version(
        session, local_store, name="lfw-like", source=result.verification_dir, kind="verification"
    )
    key = layout.pairs_key("lfw-like", version.version)
    folds = read_pair_folds(local_store, key)
    assert folds == [i // 4 for i in range(40)]
    assert len(read_pairs(local_store, key)) == 40

    # the same images without the header: no declared folds (the evaluation stratifies)
    lines = result.pairs_file.read_text().splitlines()[1:]
    result.pairs_file.write_text("\n".join(lines) + "\n")
    plain = register_dataset_version(
        session, local_store, name="lfw-plain", source=result.verification_dir, kind="verification"
    )
    assert read_pair_folds(local_store, layout.pairs_key("lfw-plain", plain.version)) is None
