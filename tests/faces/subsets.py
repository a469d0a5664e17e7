"""Small subsets of the real benchmark photos, copied into a test's folder."""

from __future__ import annotations

import shutil
from pathlib import Path

from PIL import Image

from tests.faces.benchdata import benchdata


def celeba_subset(target: Path, identities: int = 2, images: int = 3, blank: bool = True) -> Path:
    """``identities`` x ``images`` celeba_ids photos (+ one photo without a face in the first identity)."""
    source = benchdata("celeba_ids")
    for folder in sorted(p for p in source.iterdir() if p.is_dir())[:identities]:
        (target / folder.name).mkdir(parents=True, exist_ok=True)
        for photo in sorted(folder.glob("*.jpg"))[:images]:
            shutil.copyfile(photo, target / folder.name / photo.name)
    if blank:
        first = sorted(p for p in target.iterdir() if p.is_dir())[0]
        Image.new("RGB", (200, 160), (40, 90, 160)).save(first / "zz_sky.jpg")
    return target


def celeba_pairs_folder(target: Path) -> Path:
    """An LFW-style verification folder (pairs.txt) of celeba_ids photos: 2 same, 2 different pairs."""
    source = benchdata("celeba_ids")
    people = sorted(p for p in source.iterdir() if p.is_dir())[:2]
    names = [f"Person_{chr(65 + i)}" for i in range(2)]
    for person, name in zip(people, names, strict=True):
        (target / name).mkdir(parents=True, exist_ok=True)
        for index, photo in enumerate(sorted(person.glob("*.jpg"))[:2], 1):
            shutil.copyfile(photo, target / name / f"{name}_{index:04d}.jpg")
    lines = [
        "1 2",
        f"{names[0]}\t1\t2",
        f"{names[1]}\t1\t2",
        f"{names[0]}\t1\t{names[1]}\t1",
        f"{names[0]}\t2\t{names[1]}\t2",
    ]
    (target / "pairs.txt").write_text("\n".join(lines) + "\n")
    return target


def helen_subset(target: Path, count: int = 4, offset: int = 0) -> Path:
    """``count`` HELEN photos with their 68-point .pts files."""
    source = benchdata("helen_landmarks") / "testset"
    target.mkdir(parents=True, exist_ok=True)
    for photo in sorted(source.glob("*.jpg"))[offset : offset + count]:
        shutil.copyfile(photo, target / photo.name)
        shutil.copyfile(photo.with_suffix(".pts"), target / f"{photo.stem}.pts")
    return target
