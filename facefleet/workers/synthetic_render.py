"""Rendering of procedural synthetic faces: identity, per-image variation and per-dataset style (numpy + PIL).

An identity is a fixed set of face parameters (shape, skin, hair, eyes, brows, nose, mouth, marks); every
image of it varies pose, expression, lighting and noise; every dataset adds its own style (colour cast,
contrast, blur, JPEG quality). A fraction of the people appears in two datasets under different labels,
which is exactly the situation the dataset-aware training of design.md §5.2 is built for.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

_SUPERSAMPLE = 2  # draw at 2x and downsample: cheap anti-aliasing
_IDENTITY, _IMAGE, _STYLE, LAYOUT_STREAM = 1, 2, 3, 4  # seed-stream tags so each draw is order-independent


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


def seeded_rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def _colour(
    rng: np.random.Generator, low: Sequence[float], high: Sequence[float]
) -> tuple[float, float, float]:
    r, g, b = (float(rng.uniform(lo, hi)) for lo, hi in zip(low, high, strict=True))
    return r, g, b


def _hair_colour(rng: np.random.Generator) -> tuple[float, float, float]:
    """Natural hair: a blend of black, brown, auburn, blond and grey, then a darkness."""
    palette = np.array(
        [[25, 20, 18], [95, 60, 35], [150, 70, 40], [210, 180, 120], [170, 170, 165]], dtype=float
    )
    weights = rng.dirichlet(np.full(len(palette), 0.4))
    r, g, b = (weights @ palette) * rng.uniform(0.6, 1.1)
    return float(r), float(g), float(b)


def sample_identity(seed: int, person: int) -> IdentityParams:
    rng = seeded_rng(seed, _IDENTITY, person)
    tone = rng.uniform(0.0, 1.0)  # one skin-tone axis from dark to light, plus a little hue jitter
    skin = tuple(
        float(np.clip(c + rng.normal(0, 12), 0, 255))
        for c in (90 + 150 * tone, 55 + 135 * tone, 35 + 120 * tone)
    )
    marks = tuple(
        (float(rng.uniform(-0.25, 0.25)), float(rng.uniform(-0.1, 0.3))) for _ in range(rng.integers(0, 3))
    )
    return IdentityParams(
        face_w=rng.uniform(0.27, 0.37),
        face_h=rng.uniform(0.36, 0.45),
        jaw=rng.uniform(0.55, 0.95),
        skin=skin,  # type: ignore[arg-type]
        hair=_hair_colour(rng),
        hair_volume=rng.uniform(1.0, 1.2),
        hairline=rng.uniform(-0.42, -0.22),
        eye_y=rng.uniform(-0.12, 0.0),
        eye_gap=rng.uniform(0.32, 0.48),
        eye_w=rng.uniform(0.12, 0.19),
        eye_h=rng.uniform(0.05, 0.09),
        iris=_colour(rng, (20, 20, 10), (120, 150, 170)),
        brow_gap=rng.uniform(0.08, 0.16),
        brow_thick=rng.uniform(0.02, 0.055),
        brow_tilt=rng.uniform(-0.35, 0.35),
        nose_len=rng.uniform(0.14, 0.24),
        nose_w=rng.uniform(0.06, 0.14),
        mouth_y=rng.uniform(0.24, 0.34),
        mouth_w=rng.uniform(0.25, 0.45),
        lip=_colour(rng, (120, 40, 40), (210, 110, 110)),
        marks=marks,
        glasses=bool(rng.uniform() < 0.2),
    )


def sample_variation(rng: np.random.Generator) -> ImageVariation:
    grey = rng.uniform(40, 220)
    return ImageVariation(
        angle=float(rng.normal(0, 6)),
        shift=(float(rng.normal(0, 0.03)), float(rng.normal(0, 0.03))),
        scale=float(rng.uniform(0.9, 1.08)),
        yaw=float(rng.normal(0, 0.05)),
        smile=float(rng.uniform(-0.4, 1.0)),
        mouth_open=float(max(0.0, rng.normal(0, 0.4))),
        eye_open=float(rng.uniform(0.5, 1.1)),
        brow_raise=float(rng.normal(0, 0.02)),
        light_dir=float(rng.uniform(0, 2 * math.pi)),
        light_strength=float(rng.uniform(0.0, 0.45)),
        brightness=float(rng.uniform(0.75, 1.2)),
        background=tuple(float(np.clip(grey + rng.normal(0, 25), 0, 255)) for _ in range(3)),  # type: ignore[arg-type]
        noise=float(rng.uniform(1.0, 8.0)),
    )


def sample_style(seed: int, index: int) -> DatasetStyle:
    rng = seeded_rng(seed, _STYLE, index)
    return DatasetStyle(
        cast=_colour(rng, (0.87, 0.87, 0.87), (1.13, 1.13, 1.13)),
        contrast=float(rng.uniform(0.7, 1.3)),
        gamma=float(rng.uniform(0.8, 1.25)),
        blur=float(rng.uniform(0.0, 1.2)),
        jpeg_quality=int(rng.integers(55, 95)),
    )


def _rgb(colour: Sequence[float], factor: float = 1.0) -> tuple[int, int, int]:
    r, g, b = (int(np.clip(c * factor, 0, 255)) for c in colour)
    return r, g, b


def _draw_features(
    draw: ImageDraw.ImageDraw, ident: IdentityParams, var: ImageVariation, px: Callable
) -> None:
    """Eyes, brows, nose, mouth, marks, glasses; coordinates in face widths / heights from the centre."""
    for side in (-1, 1):
        ex, ey = side * ident.eye_gap / 2 + var.yaw, ident.eye_y
        ew, eh = ident.eye_w / 2 * (1 - side * var.yaw * 3), ident.eye_h / 2 * var.eye_open
        draw.ellipse([*px(ex - ew, ey - eh), *px(ex + ew, ey + eh)], fill=(235, 235, 230))
        ir = min(ew, ident.eye_h / 2) * 0.75
        draw.ellipse([*px(ex - ir * 0.6, ey - ir), *px(ex + ir * 0.6, ey + ir)], fill=_rgb(ident.iris))
        by = ey - ident.brow_gap - var.brow_raise
        tilt = side * ident.brow_tilt * ew
        brow = [
            px(ex - ew * 1.1, by + tilt),
            px(ex + ew * 1.1, by - tilt),
            px(ex + ew * 1.1, by - tilt - ident.brow_thick),
            px(ex - ew * 1.1, by + tilt - ident.brow_thick),
        ]
        draw.polygon(brow, fill=_rgb(ident.hair, 0.6))
        if ident.glasses:
            draw.ellipse(
                [*px(ex - ew * 1.5, ey - ew * 1.1), *px(ex + ew * 1.5, ey + ew * 1.1)],
                outline=(30, 30, 30),
                width=3,
            )
    ny = ident.eye_y + ident.nose_len
    nose = [
        px(var.yaw * 1.5, ident.eye_y + 0.05),
        px(var.yaw * 1.5 - ident.nose_w / 2, ny),
        px(var.yaw * 1.5 + ident.nose_w / 2, ny),
    ]
    draw.polygon(nose, fill=_rgb(ident.skin, 0.8))
    mw, my = ident.mouth_w / 2, ident.mouth_y
    curve = 0.06 * var.smile
    top = [px(var.yaw + mw * t, my - curve * (1 - t * t) * -1 - 0.01) for t in np.linspace(-1, 1, 9)]
    bottom = [
        px(var.yaw + mw * t, my + (0.03 + 0.08 * var.mouth_open) * (1 - t * t) + curve * (1 - t * t))
        for t in np.linspace(1, -1, 9)
    ]
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
    draw.ellipse(
        [cx - half_w * hv * 1.05, cy - half_h * hv * 1.1, cx + half_w * hv * 1.05, cy + half_h * 0.4],
        fill=_rgb(ident.hair),
    )
    for side in (-1, 1):
        ex = cx + side * half_w * (1.0 - var.yaw * side)
        draw.ellipse(
            [ex - half_w * 0.14, cy - half_h * 0.15, ex + half_w * 0.14, cy + half_h * 0.2],
            fill=_rgb(ident.skin, 0.92),
        )
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
    image = image.rotate(
        var.angle, resample=Image.Resampling.BILINEAR, center=(cx, cy), fillcolor=_rgb(var.background)
    )
    return image.resize((size, size), Image.Resampling.BILINEAR)


def _photograph(
    face: Image.Image, var: ImageVariation, style: DatasetStyle, rng: np.random.Generator
) -> bytes:
    """Lighting, sensor noise and the dataset's style, then JPEG at the style's quality."""
    size = face.size[0]
    pixels = np.asarray(face, dtype=np.float32) / 255.0
    coords = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    xs, ys = np.meshgrid(coords, coords)
    light = var.brightness * (
        1 + var.light_strength * (np.cos(var.light_dir) * xs + np.sin(var.light_dir) * ys)
    )
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


def render_image(
    seed: int, person: int, style: DatasetStyle, image_stream: Sequence[int], size: int
) -> bytes:
    """One JPEG of ``person`` in ``style``; ``image_stream`` makes its variation distinct and repeatable."""
    rng = seeded_rng(seed, _IMAGE, *image_stream)
    var = sample_variation(rng)
    return _photograph(_draw_face(sample_identity(seed, person), var, size), var, style, rng)
