"""Procedural synthetic face datasets (numpy + PIL only): K styled datasets sharing some people, plus a verification set.

An identity is a fixed set of face parameters (shape, skin, hair, eyes, brows, nose, mouth, marks); every
image of it varies pose, expression, lighting and noise; every dataset adds its own style (colour cast,
contrast, blur, JPEG quality). A fraction of the people appears in two datasets under different labels,
which is exactly the situation the dataset-aware training of design.md §5.2 is built for.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from pydantic import BaseModel

_SUPERSAMPLE = 2  # draw at 2x and downsample: cheap anti-aliasing
_IDENTITY, _IMAGE, _STYLE, _LAYOUT = 1, 2, 3, 4  # seed-stream tags so each draw is order-independent


class SynthResult(BaseModel):
    """Where the generator wrote everything."""

    dataset_dirs: list[Path]
    verification_dir: Path
    pairs_file: Path
    ground_truth_file: Path
    image_count: int


@dataclass(frozen=True)
class IdentityParams:
    face_w: float
    face_h: float
    jaw: float
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    hair_volume: float
    hairline: float
    eye_y: float
    eye_gap: float
    eye_w: float
    eye_h: float
    iris: tuple[float, float, float]
    brow_gap: float
    brow_thick: float
    brow_tilt: float
    nose_len: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    lip: tuple[float, float, float]
    marks: tuple[tuple[float, float], ...]
    glasses: bool


@dataclass(frozen=True)
class ImageVariation:
    angle: float
    shift: tuple[float, float]
    scale: float
    yaw: float
    smile: float
    mouth_open: float
    eye_open: float
    brow_raise: float
    light_dir: float
    light_strength: float
    brightness: float
    background: tuple[float, float, float]
    noise: float


@dataclass(frozen=True)
class DatasetStyle:
    cast: tuple[float, float, float]
    contrast: float
    gamma: float
    blur: float
    jpeg_quality: int


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def _colour(rng: np.random.Generator, low: Sequence[float], high: Sequence[float]) -> tuple[float, float, float]:
    r, g, b = (float(rng.uniform(lo, hi)) for lo, hi in zip(low, high))
    return r, g, b


def _hair_colour(rng: np.random.Generator) -> tuple[float, float, float]:
    """Natural hair: a blend of black, brown, auburn, blond and grey, then a darkness."""
    palette = np.array([[25, 20, 18], [95, 60, 35], [150, 70, 40], [210, 180, 120], [170, 170, 165]], dtype=float)
    weights = rng.dirichlet(np.full(len(palette), 0.4))
    r, g, b = (weights @ palette) * rng.uniform(0.6, 1.1)
    return float(r), float(g), float(b)


def sample_identity(seed: int, person: int) -> IdentityParams:
    rng = _rng(seed, _IDENTITY, person)
    tone = rng.uniform(0.0, 1.0)  # one skin-tone axis from dark to light, plus a little hue jitter
    skin = tuple(float(np.clip(c + rng.normal(0, 12), 0, 255)) for c in (90 + 150 * tone, 55 + 135 * tone, 35 + 120 * tone))
    marks = tuple((float(rng.uniform(-0.25, 0.25)), float(rng.uniform(-0.1, 0.3))) for _ in range(rng.integers(0, 3)))
    return IdentityParams(
        face_w=rng.uniform(0.27, 0.37), face_h=rng.uniform(0.36, 0.45), jaw=rng.uniform(0.55, 0.95),
        skin=skin,  # type: ignore[arg-type]
        hair=_hair_colour(rng), hair_volume=rng.uniform(1.0, 1.2),
        hairline=rng.uniform(-0.42, -0.22), eye_y=rng.uniform(-0.12, 0.0), eye_gap=rng.uniform(0.32, 0.48),
        eye_w=rng.uniform(0.12, 0.19), eye_h=rng.uniform(0.05, 0.09), iris=_colour(rng, (20, 20, 10), (120, 150, 170)),
        brow_gap=rng.uniform(0.08, 0.16), brow_thick=rng.uniform(0.02, 0.055), brow_tilt=rng.uniform(-0.35, 0.35),
        nose_len=rng.uniform(0.14, 0.24), nose_w=rng.uniform(0.06, 0.14), mouth_y=rng.uniform(0.24, 0.34),
        mouth_w=rng.uniform(0.25, 0.45), lip=_colour(rng, (120, 40, 40), (210, 110, 110)), marks=marks,
        glasses=bool(rng.uniform() < 0.2),
    )


def sample_variation(rng: np.random.Generator) -> ImageVariation:
    grey = rng.uniform(40, 220)
    return ImageVariation(
        angle=float(rng.normal(0, 6)), shift=(float(rng.normal(0, 0.03)), float(rng.normal(0, 0.03))),
        scale=float(rng.uniform(0.9, 1.08)), yaw=float(rng.normal(0, 0.05)), smile=float(rng.uniform(-0.4, 1.0)),
        mouth_open=float(max(0.0, rng.normal(0, 0.4))), eye_open=float(rng.uniform(0.5, 1.1)),
        brow_raise=float(rng.normal(0, 0.02)), light_dir=float(rng.uniform(0, 2 * math.pi)),
        light_strength=float(rng.uniform(0.0, 0.45)), brightness=float(rng.uniform(0.75, 1.2)),
        background=tuple(float(np.clip(grey + rng.normal(0, 25), 0, 255)) for _ in range(3)),  # type: ignore[arg-type]
        noise=float(rng.uniform(1.0, 8.0)),
    )


def sample_style(seed: int, index: int) -> DatasetStyle:
    rng = _rng(seed, _STYLE, index)
    return DatasetStyle(
        cast=_colour(rng, (0.87, 0.87, 0.87), (1.13, 1.13, 1.13)), contrast=float(rng.uniform(0.7, 1.3)),
        gamma=float(rng.uniform(0.8, 1.25)), blur=float(rng.uniform(0.0, 1.2)), jpeg_quality=int(rng.integers(55, 95)),
    )


def _rgb(colour: Sequence[float], factor: float = 1.0) -> tuple[int, int, int]:
    r, g, b = (int(np.clip(c * factor, 0, 255)) for c in colour)
    return r, g, b


def _draw_features(draw: ImageDraw.ImageDraw, ident: IdentityParams, var: ImageVariation, px: Callable) -> None:
    """Eyes, brows, nose, mouth, marks, glasses; coordinates in face units (x: half-widths, y: half-heights)."""
    for side in (-1, 1):
        ex, ey = side * ident.eye_gap / 2 + var.yaw, ident.eye_y
        ew, eh = ident.eye_w / 2 * (1 - side * var.yaw * 3), ident.eye_h / 2 * var.eye_open
        draw.ellipse([*px(ex - ew, ey - eh), *px(ex + ew, ey + eh)], fill=(235, 235, 230))
        ir = min(ew, ident.eye_h / 2) * 0.75
        draw.ellipse([*px(ex - ir * 0.6, ey - ir), *px(ex + ir * 0.6, ey + ir)], fill=_rgb(ident.iris))
        by = ey - ident.brow_gap - var.brow_raise
        tilt = side * ident.brow_tilt * ew
        brow = [px(ex - ew * 1.1, by + tilt), px(ex + ew * 1.1, by - tilt),
                px(ex + ew * 1.1, by - tilt - ident.brow_thick), px(ex - ew * 1.1, by + tilt - ident.brow_thick)]
        draw.polygon(brow, fill=_rgb(ident.hair, 0.6))
        if ident.glasses:
            draw.ellipse([*px(ex - ew * 1.5, ey - ew * 1.1), *px(ex + ew * 1.5, ey + ew * 1.1)],
                         outline=(30, 30, 30), width=3)
    ny = ident.eye_y + ident.nose_len
    nose = [px(var.yaw * 1.5, ident.eye_y + 0.05), px(var.yaw * 1.5 - ident.nose_w / 2, ny),
            px(var.yaw * 1.5 + ident.nose_w / 2, ny)]
    draw.polygon(nose, fill=_rgb(ident.skin, 0.8))
    mw, my = ident.mouth_w / 2, ident.mouth_y
    curve = 0.06 * var.smile
    top = [px(var.yaw + mw * t, my - curve * (1 - t * t) * -1 - 0.01) for t in np.linspace(-1, 1, 9)]
    bottom = [px(var.yaw + mw * t, my + (0.03 + 0.08 * var.mouth_open) * (1 - t * t) + curve * (1 - t * t))
              for t in np.linspace(1, -1, 9)]
    draw.polygon(top + bottom, fill=_rgb(ident.lip))
    for mx, my_ in ident.marks:
        r = 0.018
        draw.ellipse([*px(mx - r, my_ - r), *px(mx + r, my_ + r)], fill=_rgb(ident.skin, 0.45))


def _draw_face(ident: IdentityParams, var: ImageVariation, size: int) -> Image.Image:
    canvas = size * _SUPERSAMPLE
    image = Image.new("RGB", (canvas, canvas), _rgb(var.background))
    draw = ImageDraw.Draw(image)
    cx, cy = canvas * (0.5 + var.shift[0]), canvas * (0.52 + var.shift[1])
    half_w, half_h = ident.face_w * canvas * var.scale, ident.face_h * canvas * var.scale

    def px(x: float, y: float) -> tuple[float, float]:
        return cx + x * half_w * 2, cy + y * half_h * 2

    hv = ident.hair_volume
    draw.ellipse([cx - half_w * hv * 1.05, cy - half_h * hv * 1.1, cx + half_w * hv * 1.05, cy + half_h * 0.4],
                 fill=_rgb(ident.hair))
    for side in (-1, 1):
        ex = cx + side * half_w * (1.0 - var.yaw * side)
        draw.ellipse([ex - half_w * 0.14, cy - half_h * 0.15, ex + half_w * 0.14, cy + half_h * 0.2],
                     fill=_rgb(ident.skin, 0.92))
    outline = []
    for t in np.linspace(0, 2 * math.pi, 48, endpoint=False):
        lower = max(0.0, math.sin(t))
        narrow = 1 - (1 - ident.jaw) * lower**2  # the jaw narrows toward the chin
        outline.append((cx + half_w * math.cos(t) * narrow, cy + half_h * math.sin(t)))
    draw.polygon(outline, fill=_rgb(ident.skin))
    fringe = [(x, y) for x, y in outline if y <= cy + ident.hairline * half_h * 2]
    if len(fringe) >= 3:
        draw.polygon(fringe, fill=_rgb(ident.hair))
    _draw_features(draw, ident, var, px)
    image = image.rotate(var.angle, resample=Image.Resampling.BILINEAR, center=(cx, cy),
                         fillcolor=_rgb(var.background))
    return image.resize((size, size), Image.Resampling.BILINEAR)


def _photograph(face: Image.Image, var: ImageVariation, style: DatasetStyle, rng: np.random.Generator) -> bytes:
    """Lighting, sensor noise and the dataset's style, then JPEG at the style's quality."""
    size = face.size[0]
    pixels = np.asarray(face, dtype=np.float32) / 255.0
    coords = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    xs, ys = np.meshgrid(coords, coords)
    light = var.brightness * (1 + var.light_strength * (np.cos(var.light_dir) * xs + np.sin(var.light_dir) * ys))
    pixels = pixels * light[..., None] * np.asarray(style.cast, dtype=np.float32)
    pixels = (pixels - pixels.mean()) * style.contrast + pixels.mean()
    pixels = np.clip(pixels, 0, 1) ** style.gamma * 255.0
    pixels += rng.normal(0, var.noise, pixels.shape).astype(np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if style.blur > 0.05:
        image = image.filter(ImageFilter.GaussianBlur(style.blur))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=style.jpeg_quality)
    return buffer.getvalue()


def render_image(seed: int, person: int, style: DatasetStyle, image_stream: Sequence[int], size: int) -> bytes:
    """One JPEG of ``person`` in ``style``; ``image_stream`` makes each image's variation distinct and repeatable."""
    rng = _rng(seed, _IMAGE, *image_stream)
    var = sample_variation(rng)
    return _photograph(_draw_face(sample_identity(seed, person), var, size), var, style, rng)


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


def write_lfw_pairs_file(path: Path, pairs: Sequence[tuple[tuple[str, int], tuple[str, int], bool]], folds: int) -> None:
    """LFW layout: header 'folds per_fold', then per fold ``per_fold`` same lines and ``per_fold`` different lines."""
    same = [p for p in pairs if p[2]]
    different = [p for p in pairs if not p[2]]
    per_fold = min(len(same), len(different)) // folds
    if per_fold < 1:
        raise ValueError(f"{len(pairs)} pairs cannot fill {folds} folds with same and different pairs")
    lines = [f"{folds}\t{per_fold}"]
    for fold in range(folds):
        for (name, n1), (_, n2), _same in same[fold * per_fold:(fold + 1) * per_fold]:
            lines.append(f"{name}\t{n1}\t{n2}")
        for (name1, n1), (name2, n2), _same in different[fold * per_fold:(fold + 1) * per_fold]:
            lines.append(f"{name1}\t{n1}\t{name2}\t{n2}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _verification_pairs(
    rng: np.random.Generator, names: list[str], images: int, count: int
) -> list[tuple[tuple[str, int], tuple[str, int], bool]]:
    pairs: list[tuple[tuple[str, int], tuple[str, int], bool]] = []
    seen: set[tuple[tuple[str, int], tuple[str, int]]] = set()
    for index in range(count * 20):  # bounded: small sets may not have `count` distinct pairs
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
    """Write ``<out>/synth_<k>/<identity>/<n>.jpg`` trees, ``<out>/verification`` (LFW layout) and ground_truth.json.

    ``progress`` is called with 1 after each image written.
    """
    if num_datasets < 1 or identities_per_dataset < 1 or images_per_identity < 2 or verification_identities < 2:
        raise ValueError("need >= 1 dataset, >= 1 identity, >= 2 images per identity, >= 2 verification identities")
    if not 0.0 <= overlap_fraction <= 1.0:
        raise ValueError("overlap_fraction must lie in [0, 1]")
    out_dir = Path(out_dir)
    people = assign_people(num_datasets, identities_per_dataset, overlap_fraction)
    truth: dict[str, dict[str, str]] = {}
    dataset_dirs: list[Path] = []
    count = 0
    for k, members in enumerate(people):
        name, style = f"synth_{k}", sample_style(seed, k)
        order = _rng(seed, _LAYOUT, k).permutation(len(members))  # labels do not reveal who is shared
        truth[name] = {}
        for position, member_index in enumerate(order):
            person, folder = members[member_index], f"{name}_id{position:04d}"
            truth[name][folder] = f"person_{person:05d}"
            for n in range(images_per_identity):
                _write(out_dir / name / folder / f"{n:04d}.jpg", render_image(seed, person, style, (k, person, n), image_size))
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
            data = render_image(seed, first_held_out + i, style, (num_datasets, first_held_out + i, n), image_size)
            _write(verification_dir / folder / f"{folder}_{n:04d}.jpg", data)
            count += 1
            if progress:
                progress(1)
    pairs = _verification_pairs(_rng(seed, _LAYOUT, 10_000), names, images_per_identity, verification_pairs)
    pairs_file = verification_dir / "pairs.txt"
    write_lfw_pairs_file(pairs_file, pairs, folds=10 if len(pairs) >= 20 else 1)
    ground_truth_file = out_dir / "ground_truth.json"
    ground_truth_file.write_text(json.dumps(_ground_truth(truth, seed), indent=2), encoding="utf-8")
    return SynthResult(dataset_dirs=dataset_dirs, verification_dir=verification_dir, pairs_file=pairs_file,
                       ground_truth_file=ground_truth_file, image_count=count)


def _ground_truth(truth: dict[str, dict[str, str]], seed: int) -> dict[str, object]:
    """Per dataset: folder -> person, and the groups of (dataset, folder) that are the same person."""
    by_person: dict[str, list[list[str]]] = {}
    for dataset, folders in truth.items():
        for folder, person in folders.items():
            by_person.setdefault(person, []).append([dataset, folder])
    shared = {person: places for person, places in sorted(by_person.items()) if len(places) > 1}
    return {"seed": seed, "datasets": truth, "same_person": shared}
