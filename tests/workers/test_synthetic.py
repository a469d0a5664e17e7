"""Synthetic face datasets: layout, determinism, shared people, verification pairs in LFW layout."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from facefleet.workers.synthetic import assign_people, generate_synthetic_datasets, render_image, sample_style


def _digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _small(out: Path, seed: int = 0):  # type: ignore[no-untyped-def]
    return generate_synthetic_datasets(
        out,
        num_datasets=3,
        identities_per_dataset=6,
        images_per_identity=3,
        overlap_fraction=0.34,
        verification_identities=4,
        verification_pairs=20,
        image_size=48,
        seed=seed,
    )


def test_layout_ground_truth_and_pairs(tmp_path: Path) -> None:
    ticks: list[int] = []
    result = generate_synthetic_datasets(
        tmp_path,
        num_datasets=3,
        identities_per_dataset=6,
        images_per_identity=3,
        overlap_fraction=0.34,
        verification_identities=4,
        verification_pairs=20,
        image_size=48,
        seed=0,
        progress=ticks.append,
    )
    assert [d.name for d in result.dataset_dirs] == ["synth_0", "synth_1", "synth_2"]
    assert result.image_count == sum(ticks) == 3 * 6 * 3 + 4 * 3
    for dataset_dir in result.dataset_dirs:
        identities = sorted(p for p in dataset_dir.iterdir())
        assert len(identities) == 6 and all(len(list(p.glob("*.jpg"))) == 3 for p in identities)
    image = Image.open(next(result.dataset_dirs[0].rglob("*.jpg")))
    assert image.size == (48, 48) and image.mode == "RGB"
    truth = json.loads(result.ground_truth_file.read_text())
    # 2 shared people per dataset, each appearing in two datasets under different folder names
    assert len(truth["same_person"]) == 3
    for places in truth["same_person"].values():
        assert len({dataset for dataset, _folder in places}) == len(places) == 2
    lines = result.pairs_file.read_text().splitlines()
    assert lines[0] == "10\t1"  # LFW header: folds, same (and different) pairs per fold
    for line in lines[1:]:
        fields = line.split("\t")
        name, number = fields[0], int(fields[1])
        assert (result.verification_dir / name / f"{name}_{number:04d}.jpg").is_file()
    assert sum(len(line.split("\t")) == 3 for line in lines[1:]) == 10


def test_pairs_file_reads_with_the_registration_parser(tmp_path: Path) -> None:
    from facefleet.platform.datasets.verification import read_pairs_file

    result = _small(tmp_path)
    pairs = read_pairs_file(result.pairs_file, result.verification_dir)
    assert len(pairs) == 20
    assert all((result.verification_dir / pair.left).is_file() for pair in pairs)


def test_deterministic_from_the_seed(tmp_path: Path) -> None:
    first, second = _small(tmp_path / "a"), _small(tmp_path / "b")
    assert _digest(first.verification_dir.parent) == _digest(second.verification_dir.parent)
    assert _digest(_small(tmp_path / "c", seed=1).verification_dir.parent) != _digest(tmp_path / "a")


def test_people_assignment_shares_a_fraction() -> None:
    people = assign_people(3, 10, 0.3)
    assert all(len(set(p)) == 10 for p in people)
    counts = np.bincount(np.concatenate(people))
    assert (counts == 2).sum() == 4 and counts.max() == 2  # 9 shared slots over 5 pooled people
    assert assign_people(1, 5, 0.5) == [[0, 1, 2, 3, 4]]


def test_same_person_is_more_alike_than_different_people() -> None:
    style = sample_style(0, 0)

    def pixels(person: int, n: int) -> np.ndarray:
        import io

        data = render_image(0, person, style, (0, person, n), 48)
        return np.asarray(Image.open(io.BytesIO(data)), dtype=np.float32)

    same = [np.abs(pixels(p, 0) - pixels(p, 1)).mean() for p in range(6)]
    different = [np.abs(pixels(p, 0) - pixels(p + 1, 1)).mean() for p in range(6)]
    assert np.mean(same) < np.mean(different)
    assert min(same) > 0  # images of one person still vary
