"""Data preparation for `bench/real_faces.py`: align celeba_ids / orl_faces once (the product's MTCNN
aligner, `facefleet.faces.aligner`), cache the 112x112 crops in a gitignored folder, and build the
identity-disjoint train/test people, the two overlapping training datasets and the LFW-layout pairs.

Run alone to fill the cache: `.venv/bin/python bench/real_faces_data.py` (about 6 CPU-minutes).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BENCHDATA = next(
    (p for p in (ROOT.parent / "shared" / "benchdata", Path("/work/shared/benchdata")) if p.is_dir()),
    ROOT.parent / "shared" / "benchdata",
)
CACHE = ROOT / "bench" / "results" / "aligned"  # bench/results/ is gitignored


def align_folder(source: Path, target: Path, reverse: bool = False) -> dict[str, int]:
    """Align every `<identity>/<image>` of `source` into `target/<identity>/<stem>.png` (skipped when
    already there); photos without a face are listed in `target/no_face.json`. Returns counts."""
    from facefleet.faces.aligner import mtcnn_aligner

    done_marker = target / "done.json"
    if done_marker.exists():
        return dict(json.loads(done_marker.read_text()))
    aligner = mtcnn_aligner()
    photos = sorted(p for p in source.glob("*/*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".pgm"})
    if reverse:  # a second process can fill the cache from the other end
        photos = photos[::-1]
    no_face: list[str] = []
    started = time.monotonic()
    for i, photo in enumerate(photos):
        out = target / photo.parent.name / f"{photo.stem}.png"
        if out.exists():
            continue
        with Image.open(photo) as image:
            outcome = aligner.align(image)
        if outcome.image is None:
            no_face.append(f"{photo.parent.name}/{photo.name}")
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        outcome.image.save(out)
        if i % 200 == 0:
            print(
                f"  aligned {i}/{len(photos)} of {source.name} ({time.monotonic() - started:.0f} s)",
                flush=True,
            )
    if reverse:
        return {"photos": len(photos)}
    counts = {"photos": len(photos), "no_face": len(no_face)}
    (target / "no_face.json").write_text(json.dumps(no_face, indent=1))
    done_marker.write_text(json.dumps(counts))
    return counts


if __name__ == "__main__":
    backwards = "--reverse" in sys.argv
    for name in [a for a in sys.argv[1:] if not a.startswith("--")] or ["celeba_ids", "orl_faces"]:
        print(name, align_folder(BENCHDATA / name, CACHE / name, reverse=backwards), flush=True)


# ------------------------------------------------------------------ the benchmark's people and pairs


@dataclass
class Split:
    """Where the bench's registered folders are and what they hold."""

    train_a: Path
    train_b: Path
    orl: Path
    val: Path  # verification set of validation people (training identities held out): tune here
    test: Path  # verification set of the test people: report only
    shared: int  # people in both training datasets (different images, different labels)
    people: dict[str, int]
    pairs: dict[str, str]  # set -> "folds x same + different"
    probe: list[tuple[Path, int, str]]  # (image, dataset 0/1/2, person) never trained on: the probe's data
    overlap_truth: list[tuple[str, str]]  # (label in A, label in B) of the shared people


def _images(folder: Path) -> dict[str, list[Path]]:
    return {d.name: sorted(d.glob("*.png")) for d in sorted(folder.iterdir()) if d.is_dir()}


def _lfw_pairs(
    rng: np.random.Generator, people: list[str], images: dict[str, list[Path]], folds: int, per_fold: int
) -> tuple[list[tuple[str, int, str, int]], list[tuple[str, int, str, int]], int]:
    """Person-disjoint folds (people dealt round-robin): per fold up to `per_fold` same pairs (i < j of
    one person) and as many different pairs (two people of the fold). Returns (same, different, n) with
    the same count n in every fold (the smallest fold's, so the file keeps LFW's layout)."""
    groups = [people[f::folds] for f in range(folds)]
    same_by_fold, diff_by_fold = [], []
    for group in groups:
        candidates = [
            (p, i + 1, p, j + 1)
            for p in group
            for i in range(len(images[p]))
            for j in range(i + 1, len(images[p]))
        ]
        order = rng.permutation(len(candidates))[:per_fold]
        same_by_fold.append([candidates[k] for k in order])
        diffs: set[tuple[str, int, str, int]] = set()
        for _ in range(per_fold * 50):
            if len(diffs) >= per_fold:
                break
            a, b = rng.choice(len(group), 2, replace=False)
            pa, pb = group[min(a, b)], group[max(a, b)]
            diffs.add(
                (pa, int(rng.integers(len(images[pa]))) + 1, pb, int(rng.integers(len(images[pb]))) + 1)
            )
        diff_by_fold.append(sorted(diffs))
    n = min(min(len(s) for s in same_by_fold), min(len(d) for d in diff_by_fold))
    return [p for s in same_by_fold for p in s[:n]], [p for d in diff_by_fold for p in d[:n]], n


def _write_verification(
    target: Path,
    people: list[str],
    images: dict[str, list[Path]],
    rng: np.random.Generator,
    folds: int,
    per_fold: int,
) -> str:
    import shutil

    if target.exists():
        shutil.rmtree(target)
    for person in people:
        (target / person).mkdir(parents=True)
        for number, image in enumerate(images[person], 1):
            shutil.copyfile(image, target / person / f"{person}_{number:04d}.png")
    same, different, n = _lfw_pairs(rng, people, images, folds, per_fold)
    lines = [f"{folds}\t{n}"]
    for fold in range(folds):
        lines += [f"{p}\t{i}\t{j}" for p, i, _, j in same[fold * n : (fold + 1) * n]]
        lines += [f"{p}\t{i}\t{q}\t{j}" for p, i, q, j in different[fold * n : (fold + 1) * n]]
    (target / "pairs.txt").write_text("\n".join(lines) + "\n")
    return f"{folds} folds x ({n} same + {n} different) = {2 * folds * n} pairs of {len(people)} people"


def build_split(
    workdir: Path, *, test_people: int = 56, val_people: int = 30, probe_images: int = 2, seed: int = 0
) -> Split:
    """Deterministic (seed 0 whatever the training seed): identity-disjoint test / validation / training
    celeba people; training people split into A and B that share about half of their people, each shared
    person's images dealt alternately to A and B under different labels; ORL as the third dataset.
    `probe_images` images of every person unique to A, unique to B and of ORL are kept out of training."""
    import shutil

    celeba, orl = _images(CACHE / "celeba_ids"), _images(CACHE / "orl_faces")
    celeba = {k: v for k, v in celeba.items() if len(v) >= 6}
    rng = np.random.default_rng(seed)
    names = [str(n) for n in rng.permutation(sorted(celeba))]
    test, val, train = (
        names[:test_people],
        names[test_people : test_people + val_people],
        names[test_people + val_people :],
    )
    third = len(train) // 3
    only_a, shared, only_b = train[:third], train[third : 2 * third], train[2 * third :]
    data = workdir / "data"
    for sub in ("train_a", "train_b", "orl"):
        if (data / sub).exists():
            shutil.rmtree(data / sub)
    probe: list[tuple[Path, int, str]] = []

    def put(dataset: str, label: str, files: list[Path]) -> None:
        (data / dataset / label).mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copyfile(f, data / dataset / label / f.name)

    for person in only_a:
        probe += [(f, 0, person) for f in celeba[person][:probe_images]]
        put("train_a", f"a{person}", celeba[person][probe_images:])
    for person in only_b:
        probe += [(f, 1, person) for f in celeba[person][:probe_images]]
        put("train_b", f"b{person}", celeba[person][probe_images:])
    for person in shared:
        put("train_a", f"a{person}", celeba[person][0::2])
        put("train_b", f"b{person}", celeba[person][1::2])
    for person, files in orl.items():
        probe += [(f, 2, person) for f in files[:probe_images]]
        put("orl", f"orl{person}", files[probe_images:])
    pairs = {
        "test": _write_verification(data / "test", test, celeba, np.random.default_rng(seed + 1), 10, 300),
        "val": _write_verification(data / "val", val, celeba, np.random.default_rng(seed + 2), 5, 120),
    }
    return Split(
        train_a=data / "train_a",
        train_b=data / "train_b",
        orl=data / "orl",
        val=data / "val",
        test=data / "test",
        shared=len(shared),
        people={
            "test": len(test),
            "val": len(val),
            "train_a": len(only_a) + len(shared),
            "train_b": len(only_b) + len(shared),
            "orl": len(orl),
        },
        pairs=pairs,
        probe=probe,
        overlap_truth=[(f"a{p}", f"b{p}") for p in shared],
    )
