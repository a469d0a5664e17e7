"""Procedural synthetic face datasets (numpy + PIL): K styled datasets sharing people + a verification set.

An identity is a fixed set of face parameters (shape, skin, hair, eyes, brows, nose, mouth, marks); every
image of it varies pose, expression, lighting and noise; every dataset adds its own style (colour cast,
contrast, blur, JPEG quality). A fraction of the people appears in two datasets under different labels,
which is exactly the situation the dataset-aware training of design.md §5.2 is built for.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from facefleet.workers.synthetic_render import LAYOUT_STREAM, render_image, sample_style, seeded_rng

__all__ = [
    "SynthResult",
    "assign_people",
    "generate_synthetic_datasets",
    "render_image",
    "sample_style",
    "write_lfw_pairs_file",
]


class SynthResult(BaseModel):
    """Where the generator wrote everything."""

    dataset_dirs: list[Path]
    verification_dir: Path
    pairs_file: Path
    ground_truth_file: Path
    image_count: int


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def assign_people(num_datasets: int, identities_per_dataset: int, overlap_fraction: float) -> list[list[int]]:
    """Person ids of each dataset. Shared people come from a pool where each appears in two datasets."""
    shared = int(round(overlap_fraction * identities_per_dataset)) if num_datasets > 1 else 0
    pool = math.ceil(shared * num_datasets / 2)
    next_person = pool
    people: list[list[int]] = []
    for k in range(num_datasets):
        # consecutive windows over the pool: every pooled person lands in ~2 datasets, never twice in one
        members = [(k * shared + j) % pool for j in range(shared)] if pool else []
        own = list(range(next_person, next_person + identities_per_dataset - shared))
        next_person += len(own)
        people.append(members + own)
    return people


def write_lfw_pairs_file(
    path: Path, pairs: Sequence[tuple[tuple[str, int], tuple[str, int], bool]], folds: int
) -> None:
    """LFW layout: header 'folds per_fold', then per fold ``per_fold`` same, ``per_fold`` different lines."""
    same = [p for p in pairs if p[2]]
    different = [p for p in pairs if not p[2]]
    per_fold = min(len(same), len(different)) // folds
    if per_fold < 1:
        raise ValueError(f"{len(pairs)} pairs cannot fill {folds} folds with same and different pairs")
    lines = [f"{folds}\t{per_fold}"]
    for fold in range(folds):
        for (name, n1), (_, n2), _same in same[fold * per_fold : (fold + 1) * per_fold]:
            lines.append(f"{name}\t{n1}\t{n2}")
        for (name1, n1), (name2, n2), _same in different[fold * per_fold : (fold + 1) * per_fold]:
            lines.append(f"{name1}\t{n1}\t{name2}\t{n2}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _verification_pairs(
    rng: np.random.Generator, names: list[str], images: int, count: int
) -> list[tuple[tuple[str, int], tuple[str, int], bool]]:
    pairs: list[tuple[tuple[str, int], tuple[str, int], bool]] = []
    seen: set[tuple[tuple[str, int], tuple[str, int]]] = set()
    for _attempt in range(count * 20):  # bounded: small sets may not have `count` distinct pairs
        if len(pairs) >= count:
            break
        is_same = len(pairs) % 2 == 0
        a = int(rng.integers(len(names)))
        b = a if is_same else int((a + rng.integers(1, len(names))) % len(names))
        n1, n2 = (int(v) + 1 for v in rng.choice(images, 2, replace=False))
        key = ((names[a], n1), (names[b], n2))
        if key not in seen:
            seen.add(key)
            pairs.append((key[0], key[1], is_same))
    return pairs


def generate_synthetic_datasets(
    out_dir: Path,
    *,
    num_datasets: int = 3,
    identities_per_dataset: int = 40,
    images_per_identity: int = 10,
    overlap_fraction: float = 0.3,
    verification_identities: int = 20,
    verification_pairs: int = 300,
    image_size: int = 112,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> SynthResult:
    """Write ``<out>/synth_<k>/<identity>/<n>.jpg`` trees, ``<out>/verification`` (LFW) and ground_truth.json.

    ``progress`` is called with 1 after each image written.
    """
    if (
        num_datasets < 1
        or identities_per_dataset < 1
        or images_per_identity < 2
        or verification_identities < 2
    ):
        raise ValueError(
            "need >= 1 dataset, >= 1 identity, >= 2 images per identity, >= 2 verification identities"
        )
    if not 0.0 <= overlap_fraction <= 1.0:
        raise ValueError("overlap_fraction must lie in [0, 1]")
    out_dir = Path(out_dir)
    people = assign_people(num_datasets, identities_per_dataset, overlap_fraction)
    truth: dict[str, dict[str, str]] = {}
    dataset_dirs: list[Path] = []
    count = 0
    for k, members in enumerate(people):
        name, style = f"synth_{k}", sample_style(seed, k)
        order = seeded_rng(seed, LAYOUT_STREAM, k).permutation(
            len(members)
        )  # labels do not reveal who is shared
        truth[name] = {}
        for position, member_index in enumerate(order):
            person, folder = members[member_index], f"{name}_id{position:04d}"
            truth[name][folder] = f"person_{person:05d}"
            for n in range(images_per_identity):
                _write(
                    out_dir / name / folder / f"{n:04d}.jpg",
                    render_image(seed, person, style, (k, person, n), image_size),
                )
                count += 1
                if progress:
                    progress(1)
        dataset_dirs.append(out_dir / name)
    first_held_out = max((max(m) for m in people if m), default=-1) + 1
    verification_dir = out_dir / "verification"
    style = sample_style(seed, num_datasets)
    names = [f"verify_{i:04d}" for i in range(verification_identities)]
    for i, folder in enumerate(names):
        for n in range(1, images_per_identity + 1):
            data = render_image(
                seed, first_held_out + i, style, (num_datasets, first_held_out + i, n), image_size
            )
            _write(verification_dir / folder / f"{folder}_{n:04d}.jpg", data)
            count += 1
            if progress:
                progress(1)
    pairs = _verification_pairs(
        seeded_rng(seed, LAYOUT_STREAM, 10_000), names, images_per_identity, verification_pairs
    )
    pairs_file = verification_dir / "pairs.txt"
    write_lfw_pairs_file(pairs_file, pairs, folds=10 if len(pairs) >= 20 else 1)
    ground_truth_file = out_dir / "ground_truth.json"
    ground_truth_file.write_text(json.dumps(_ground_truth(truth, seed), indent=2), encoding="utf-8")
    return SynthResult(
        dataset_dirs=dataset_dirs,
        verification_dir=verification_dir,
        pairs_file=pairs_file,
        ground_truth_file=ground_truth_file,
        image_count=count,
    )


def _ground_truth(truth: dict[str, dict[str, str]], seed: int) -> dict[str, object]:
    """Per dataset: folder -> person, and the groups of (dataset, folder) that are the same person."""
    by_person: dict[str, list[list[str]]] = {}
    for dataset, folders in truth.items():
        for folder, person in folders.items():
            by_person.setdefault(person, []).append([dataset, folder])
    shared = {person: places for person, places in sorted(by_person.items()) if len(places) > 1}
    return {"seed": seed, "datasets": truth, "same_person": shared}
