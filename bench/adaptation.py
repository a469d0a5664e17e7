"""Benchmark: on-device adaptation on real faces under drift, impostor-probe guard on vs off (issue 18).

Data: `../shared/benchdata/celeba_ids` (CelebA photos, identity labels), **aligned**: every photo is
detected and warped to the 112x112 ArcFace template with MTCNN's five points (facefleet/faces), once, into
`bench/results/aligned/celeba_ids/` (gitignored; bench/real_faces_data.py's cache, shared with
bench/real_faces.py); photos without a face are left out, and each identity's first 14 aligned photos are
used. The aligned crop is resized to the model input (40 px). Identities are split by name: the first 200
train a tiny backbone in this process (normalised softmax; cached beside the crops per step count); the
other 56 (52 with >= 12 aligned photos) are never seen in training and give, per seed, 8 enrolled users and
8 impostor identities. Each enrolled user enrolls 3 photos; then, over 24 rounds, drift grows on real photos
(site lighting and colour cast shared by everyone; per user a pose crop, blur and an occluding band), each
user comes back once a round, and 4 impostor attempts a round are made against random users (an accepted
impostor would feed the adapter: that is the attack the gate and the guard are for). Before and after, with
adaptation off: genuine accept rate on the last 4 photos at the final drift, impostor accepts over all
(impostor photo, enrolled user) pairs at the final drift. The card threshold is set for ~1% FAR on pairs of
training identities (photos left out of training). Each seed runs the same terminal three ways (VARIANTS):
guard on (the default terminal: gated positives + impostor-probe guard, probe split by user, with recent
captures), the previous guard (split by image, no captures, no near-miss or tail check), and guard off (the
seed's method, SEED_METHOD: every accepted input is a positive, no probe check).
Target: guard on adds zero impostor accepts across seeds and users, and its genuine gain is at least half
of the unguarded one.
"Newly accepted" counts (user, impostor photo) pairs rejected before adaptation and accepted after.
Run: nice -n 10 .venv/bin/python bench/adaptation.py [--seeds 5] [--first-seed 0] [--steps 600]
[--backbone tiny|tiny_gdc] [--variants "on,previous guard,off"]
"""

from __future__ import annotations

import argparse
import base64
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._support import TINY_NETS, write_artifacts  # noqa: E402
from facefleet.nn.backbones import Backbone, get_backbone  # noqa: E402
from facefleet.terminal.adaptation import SEED_METHOD  # noqa: E402
from facefleet.terminal.guard import GuardConfig  # noqa: E402
from facefleet.terminal.local import Identity, Terminal  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA_CANDIDATES = [
    REPO.parent / "shared/benchdata/celeba_ids",
    REPO.parents[1] / "shared/benchdata/celeba_ids",
]
SIZE = 40
TRAIN_IDS = 200
ROUNDS = 24
FINAL = 0.5  # drift level reached in the last round and used for the before/after scores
console = Console(width=150)


ALIGNED = REPO / "bench/results/aligned/celeba_ids"  # gitignored; bench/real_faces_data.py's cache
MODELS = REPO / "bench/results/adaptation"  # the base model, cached per (identities, steps)
PER_ID = 14
MIN_PHOTOS = 12  # an unseen identity needs 3 to enroll, >= 5 to come back with, 4 for the final scores


def aligned_photos(data: Path, cache: Path = ALIGNED) -> dict[str, list[Image.Image]]:
    """Every identity's first ``PER_ID`` aligned photos: celeba_ids aligned to the 112x112 ArcFace template
    with MTCNN's five points (facefleet/faces) once, by bench/real_faces_data.py (shared with
    bench/real_faces.py, ~5 min on one core); photos where MTCNN finds no face are left out."""
    from bench.real_faces_data import align_folder

    started = time.time()
    counts = align_folder(data, cache)
    console.print(f"aligned celeba_ids: {counts} ({time.time() - started:.0f}s)")
    people = sorted(p for p in cache.iterdir() if p.is_dir())
    return {
        person.name: [load_aligned(f) for f in sorted(person.glob("*.png"))[:PER_ID]] for person in people
    }


def load_aligned(path: Path) -> Image.Image:
    """An aligned crop at twice the model input (drift is applied at this size, then it is halved)."""
    return Image.open(path).convert("RGB").resize((SIZE * 2, SIZE * 2), Image.BILINEAR)


@dataclass(frozen=True)
class Drift:
    """Where a site and a user drift to; ``apply(image, level)`` with level in [0, 1]."""

    brightness: float
    tint: tuple[float, float, float]
    shift: tuple[float, float]
    blur: float
    band: float  # occluding band's height (fraction), at the bottom (mask/beard) or top (hat)
    band_top: bool

    def apply(self, image: Image.Image, level: float) -> Image.Image:
        size = image.width
        dx, dy = (int(s * level * size) for s in self.shift)  # pose: the crop slides and tightens
        inset = int(0.08 * level * size)
        image = image.crop((inset + dx, inset + dy, size - inset + dx, size - inset + dy)).resize(
            (size, size)
        )
        image = ImageEnhance.Brightness(image).enhance(1 + (self.brightness - 1) * level)
        array = np.asarray(image, dtype=np.float32) * (1 + (np.array(self.tint) - 1) * level)
        image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
        image = image.filter(ImageFilter.GaussianBlur(self.blur * level))
        if level > 0.3:
            draw = ImageDraw.Draw(image)
            height = int(self.band * (level - 0.3) / 0.7 * size)
            top = 0 if self.band_top else size - height
            draw.rectangle((0, top, size, top + height), fill=(90, 90, 90))
        return image


def site_and_users(rng: np.random.Generator, users: int) -> list[Drift]:
    brightness = float(rng.uniform(0.55, 0.75))  # the site got darker...
    tint = tuple(float(t) for t in rng.uniform(0.8, 1.2, size=3))  # ...and its light changed colour
    return [
        Drift(
            brightness,
            tint,  # type: ignore[arg-type]
            (float(rng.uniform(-0.08, 0.08)), float(rng.uniform(-0.08, 0.08))),
            float(rng.uniform(0.5, 1.5)),
            float(rng.uniform(0.2, 0.35)),
            bool(rng.integers(0, 2)),
        )
        for _ in range(users)
    ]


def tensor(images: list[Image.Image]) -> torch.Tensor:
    arrays = [
        np.asarray(i.resize((SIZE, SIZE), Image.BILINEAR), dtype=np.float32) / 127.5 - 1 for i in images
    ]
    return torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2).copy())


def train(people: list[list[Image.Image]], steps: int, seed: int, backbone: str = "tiny") -> Backbone:
    """A tiny backbone (`tiny` or `tiny_gdc`), normalised softmax with margin, flips and small shifts; one
    thread."""
    torch.manual_seed(seed)
    net = get_backbone(backbone, embedding_dim=64, input_size=SIZE, width=16).train()
    images = tensor([i for p in people for i in p])
    labels = torch.tensor([k for k, p in enumerate(people) for _ in p])
    head = torch.nn.Parameter(torch.randn(len(people), 64) * 0.1)
    optimiser = torch.optim.Adam([*net.parameters(), head], lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        pick = torch.randint(0, len(labels), (96,), generator=generator)
        batch, y = images[pick], labels[pick]
        if torch.rand(1, generator=generator) < 0.5:
            batch = batch.flip(3)
        shift = [int(s) for s in torch.randint(-3, 4, (2,), generator=generator)]
        batch = torch.roll(batch, shifts=shift, dims=(2, 3))
        cos = F.normalize(net(batch)) @ F.normalize(head).T
        loss = F.cross_entropy(16.0 * (cos - 0.2 * F.one_hot(y, len(people))), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return net.eval()


def cached_model(train_people: list[list[Image.Image]], steps: int, backbone: str = "tiny") -> Backbone:
    """The bench's base model, trained once per (backbone, identities, steps) and kept beside the aligned
    cache."""
    from safetensors.torch import load_file, save_file

    MODELS.mkdir(parents=True, exist_ok=True)
    path = MODELS / f"base_{backbone}_{len(train_people)}ids_{steps}steps.safetensors"
    if path.exists():
        net = get_backbone(backbone, embedding_dim=64, input_size=SIZE, width=16)
        net.load_state_dict(load_file(str(path)))
        return net.eval()
    net = train([p[:-2] for p in train_people], steps, seed=0, backbone=backbone)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return net


def base_quality(net: Backbone, people: list[list[Image.Image]], threshold: float) -> tuple[float, float]:
    """AUC and genuine accept rate of single-photo pairs (first vs last photo; impostors: first vs others'
    last) on identities the model never saw."""
    with torch.no_grad():
        first = F.normalize(net(tensor([p[0] for p in people])))
        last = F.normalize(net(tensor([p[-1] for p in people])))
    scores = first @ last.T
    genuine = scores.diagonal()
    impostor = scores[~torch.eye(len(people), dtype=torch.bool)]
    auc = float((genuine[:, None] > impostor[None, :]).float().mean())
    return auc, float((genuine >= threshold).float().mean())


def threshold_at_far(net: Backbone, people: list[list[Image.Image]], far: float) -> float:
    with torch.no_grad():
        emb = F.normalize(net(tensor([p[-1] for p in people] + [p[-2] for p in people])))
    n = len(people)
    scores = emb[:n] @ emb[n:].T
    impostor = scores[~torch.eye(n, dtype=torch.bool)]
    return float(torch.quantile(impostor, 1 - far))


# What each row runs: the default terminal; the guard as it was before the drifted, user-split probe (each
# user's images alternate between probe and negatives, no recent captures, no near-miss or tail checks); the
# seed's method as filed, no guard.
VARIANTS = {
    "on": {},
    "previous guard": {
        "guard": GuardConfig(split_by_user=False, recent_captures=0, near_misses=False, tail_fraction=0)
    },
    "off": {"guard": GuardConfig(enabled=False), "adaptation": SEED_METHOD},
}


def make_terminal(
    folder: Path, artifacts: Path, card_bytes: bytes, key: Ed25519PrivateKey, variant: str
) -> Terminal:
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    terminal = Terminal(folder, **VARIANTS[variant])  # type: ignore[arg-type]
    terminal.save_identity(
        Identity(
            server_url="http://unused",
            device_id=1,
            name="bench",
            group="g",
            credential="ffd_unused",
            public_key_pem=pem,
            adaptation_enabled=True,
        )
    )
    terminal.install(1, artifacts, card_bytes, base64.b64encode(key.sign(card_bytes)).decode())
    return terminal


@dataclass(frozen=True)
class Scored:
    genuine_accept: float
    impostor_accepts: int
    impostor_pairs: int
    accepted: np.ndarray  # which (user, impostor photo) pairs were accepted
    auc: float  # genuine attempts' scores vs impostor pairs' scores (threshold-free)


def scores(terminal: Terminal, genuine: dict[str, list[Image.Image]], impostors: list[Image.Image]) -> Scored:
    """Genuine accept rate, impostor accepts and which (user, impostor photo) pairs were accepted, and the
    AUC of genuine against impostor scores (adaptation off while scoring)."""
    identity = terminal.require_identity()
    terminal.save_identity(identity.model_copy(update={"adaptation_enabled": False}))
    g = [terminal.verify_user(u, image) for u, images in genuine.items() for image in images]
    i = [terminal.verify_user(u, image) for u in genuine for image in impostors]
    terminal.save_identity(identity)
    accepted = np.array([r.match for r in i])
    g_scores, i_scores = np.array([r.score for r in g]), np.array([r.score for r in i])
    auc = float((g_scores[:, None] > i_scores[None, :]).mean())
    return Scored(float(np.mean([r.match for r in g])), int(accepted.sum()), len(i), accepted, auc)


def run_seed(
    seed: int, held_out: list[list[Image.Image]], artifacts: Path, card_bytes: bytes, key, variant: str
):
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(held_out))
    users, impostor_people = order[:8], order[8:16]
    drifts = site_and_users(rng, 8 + 8)
    names = [f"u{k}" for k in range(8)]
    with tempfile.TemporaryDirectory() as tmp:
        terminal = make_terminal(Path(tmp), artifacts, card_bytes, key, variant)
        for name, person in zip(names, users, strict=True):
            terminal.enroll_user(name, held_out[person][:3])
        final = {
            n: [drifts[k].apply(im, FINAL) for im in held_out[p][-4:]]
            for k, (n, p) in enumerate(zip(names, users, strict=True))
        }
        impostor_final = [
            drifts[8 + k].apply(held_out[p][j], FINAL)
            for k, p in enumerate(impostor_people)
            for j in (-4, -3)
        ]
        clean = scores(
            terminal,
            {n: held_out[p][-4:] for n, p in zip(names, users, strict=True)},
            [held_out[p][j] for p in impostor_people for j in (-4, -3)],
        )
        before = scores(terminal, final, impostor_final)
        accepted_impostors = applied = refused = 0
        for step, level in enumerate(np.linspace(0.05, FINAL, ROUNDS)):
            for k, (name, person) in enumerate(zip(names, users, strict=True)):
                photo = held_out[person][3 + step % (len(held_out[person]) - 7)]
                result = terminal.verify_user(name, drifts[k].apply(photo, float(level)))
                applied += result.adapted_now
                refused += result.update_refused
            for _ in range(4):
                k = int(rng.integers(0, 8))
                impostor = held_out[impostor_people[k]]
                photo = impostor[int(rng.integers(0, len(impostor) - 4))]
                result = terminal.verify_user(
                    names[int(rng.integers(0, 8))], drifts[8 + k].apply(photo, float(level))
                )
                accepted_impostors += result.match
                applied += result.adapted_now
                refused += result.update_refused
        after = scores(terminal, final, impostor_final)
        status = terminal.adaptation_status()
    return clean, before, after, applied, refused, accepted_impostors, status


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}"
    )
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--backbone", choices=TINY_NETS, default="tiny", help="the base model")
    parser.add_argument("--data", type=Path, default=next((p for p in DATA_CANDIDATES if p.is_dir()), None))
    args = parser.parse_args()
    if args.data is None or not args.data.is_dir():
        parser.error("celeba_ids not found; give --data DIR (../shared/benchdata/celeba_ids)")
    torch.set_num_threads(1)
    started = time.time()
    photos = list(aligned_photos(args.data).values())
    train_people = [p for p in photos[:TRAIN_IDS] if len(p) >= 3]
    held_out = [p for p in photos[TRAIN_IDS:] if len(p) >= MIN_PHOTOS]
    console.print(
        f"{len(photos)} identities aligned ({time.time() - started:.0f}s); training on {len(train_people)}, "
        f"{len(held_out)} unseen identities with >= {MIN_PHOTOS} aligned photos"
    )
    net = cached_model(train_people, args.steps, args.backbone)
    threshold = threshold_at_far(net, train_people, 0.01)
    console.print(
        f"trained ({time.time() - started:.0f}s); threshold {threshold:.3f} at 1% FAR on training ids"
    )
    auc, accept = base_quality(net, held_out, threshold)
    console.print(
        f"base model on the unseen identities, aligned, no drift: verification AUC {auc:.3f}, "
        f"genuine pairs accepted at the threshold {accept:.0%}"
    )
    key = Ed25519PrivateKey.generate()
    table = Table(
        title="On-device adaptation on real faces (CelebA, MTCNN-aligned, 40 px tiny model), final drift",
        caption="genuine: held-out photos of 8 enrolled users; impostors: 16 photos x 8 users per seed",
    )
    for column in (
        "seed",
        "guard",
        "no drift: genuine / impostor accepts",
        "genuine accept before -> after",
        "impostor accepts before -> after",
        "drifted AUC before -> after",
        "updates applied / refused",
        "impostors accepted during run",
        "probe FAR",
    ):
        table.add_column(column)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    # per variant: genuine gain, (user, impostor) pairs newly accepted, updates refused, AUC change
    totals: dict[str, list[float]] = {v: [0.0, 0, 0, 0.0] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = Path(tmp) / "artifacts"
        card_bytes = write_artifacts(artifacts, net, threshold=threshold, backbone=args.backbone).to_bytes()
        for seed in seeds:
            for variant in variants:
                clean, before, after, applied, refused, during, status = run_seed(
                    seed, held_out, artifacts, card_bytes, key, variant
                )
                added = int((after.accepted & ~before.accepted).sum())  # rejected before, accepted after
                totals[variant][0] += after.genuine_accept - before.genuine_accept
                totals[variant][3] += after.auc - before.auc
                totals[variant][1] += added
                totals[variant][2] += refused
                console.print(
                    f"seed {seed} guard {variant}: genuine {before.genuine_accept:.0%} -> "
                    f"{after.genuine_accept:.0%}, impostor pairs newly accepted {added}, "
                    f"AUC {before.auc:.3f} -> {after.auc:.3f} ({time.time() - started:.0f}s)"
                )
                probe = (
                    f"{status.probe_far_shipped:.3f} -> {status.probe_far:.3f}"
                    if status and status.probe_far is not None
                    else "-"
                )
                table.add_row(
                    str(seed),
                    variant,
                    f"{clean.genuine_accept:.0%} / {clean.impostor_accepts}",
                    f"{before.genuine_accept:.0%} -> {after.genuine_accept:.0%}",
                    f"{before.impostor_accepts} -> {after.impostor_accepts} / {after.impostor_pairs} "
                    f"(+{added} new)",
                    f"{before.auc:.3f} -> {after.auc:.3f}",
                    f"{applied} / {refused}",
                    str(during),
                    probe,
                )
    console.print(table)
    summary = Table(title=f"Mean over seeds {seeds.start}-{seeds.stop - 1}")
    for column in (
        "guard",
        "mean genuine gain",
        "ratio to off",
        "impostor pairs newly accepted",
        "refused",
        "mean drifted AUC change",
    ):
        summary.add_column(column)
    gain_off = totals["off"][0] / len(seeds) if "off" in totals else float("nan")
    for variant, (gain, added, refused, auc_change) in totals.items():
        mean_gain = gain / len(seeds)
        summary.add_row(
            variant,
            f"{mean_gain:+.1%}",
            f"{mean_gain / gain_off:.2f}" if gain_off == gain_off and gain_off else "-",
            str(int(added)),
            str(int(refused)),
            f"{auc_change / len(seeds):+.3f}",
        )
    console.print(summary)
    console.print(
        "targets: guard on adds 0 impostor accepts over all seeds and users, genuine gain ratio >= 0.5; "
        f"{time.time() - started:.0f}s"
    )


if __name__ == "__main__":
    main()
