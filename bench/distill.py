"""Benchmark: terminal-sized students distilled from a bigger teacher, with inspection feedback (issue 13).

Data: `../shared/benchdata/celeba_ids` (CelebA photos, identity labels), aligned to the ArcFace template by
MTCNN: the 112x112 crops of bench/real_faces_data.py's cache when it is complete (--aligned-cache, its
done.json), else MTCNN's five points computed once and cached (--points-cache); photos without a face are
left out; --unaligned: the fixed centre crop of bench/adaptation.py, on which short runs from scratch reach
an AUC of only ~0.60 whatever the model (bench/landmarks.py). Identities are split by name: the first 200
train (teacher and students), the next 28 are "field" users: the first 20 are inspected (their terminal
attempts, labelled, are the inspection set), the last 8 validate format 2's settings (their clean pairs
give a FAR-1% threshold, their drifted attempts false rejects / accepts: defaults are chosen there); the
last 28 are held out: their clean photo pairs are the real-face verification set (AUC, TAR at FAR 1%, and
each model's card threshold at FAR 1%), and their simulated terminal attempts measure false rejects /
false accepts at that threshold. "same pairs undrifted": the false rejects on the same genuine pairs with
the attempt photo undrifted, the floor that undoing the drift can reach. Returning users: the 20 inspected
users come back to their terminal with photos never inspected (10-11 validate, 12-13 test; ten impostor
attempts per genuine one, by the other inspected users with their photos of the same never-inspected range),
at the same site: what a fleet whose attempts were inspected sees after the new student is deployed to it.

Terminal attempts: one site (darker, colour-cast light) plus per-user pose shift, blur and an occluding band
(bench/adaptation.py's drift), at a level drawn from [0.3, 0.6]. A user's reference is their first photo,
clean; a genuine attempt is one of their other photos drifted; an impostor attempt is another user's drifted
photo claimed as them. The field attempts are labelled from ground truth (a scripted inspector) and packed
as pairs (reference crop, attempt crop, verdict), the inspection-set format: both the inspected attempts and
the held-out ones go through the platform's collection path (``collected``: ``record_attempt`` with the
teacher's score and decision, ``label_attempt_audited``, ``create_inspection_set``, read back by the
distill worker's loader) into a throwaway SQLite database and local store.

Models: the teacher is trained with ArcFace on the 200 training identities (default: tiny width 32 at 48 px,
what a loaded 2-core machine trains in minutes; --teacher-width / --teacher-size / --teacher-backbone for a
bigger one; kept per settings and seed under --teacher-cache). Three students (tiny width 16 at 32 px: the
teacher's crops are resized), the same steps and batch each: (a) from scratch with ArcFace on the labels,
(b) distilled (format 1: cosine distance to the teacher's embedding + MSE of the batch cosine-similarity
matrices), (c) distilled + inspection (format 2: logistic loss of the pair score against the verdict, by
default the distill run's defaults: weight 0.7, temperature 0.2, at the batch-calibrated threshold,
impostor share 0.9, cross pairs; --format2 adds arms with other settings). The losses are
`facefleet.nn.distill`'s, as the `distill` run uses them. Latency: ONNX Runtime, 1 thread, batch 1.
Targets: (b) closes >= 50% of the AUC gap between (a) and the teacher; (c) has >= 30% fewer false rejects
than (b) on held-out drifted genuine attempts, without more false accepts (judged on the held-out users
and, apart, on the returning users); student latency <= 0.3x teacher. With --seeds N: per-seed tables,
then their means.
Run: nice -n 10 .venv/bin/python bench/distill.py [--seeds 3] [--student-steps 250] [--teacher-steps 600]
"""

from __future__ import annotations

import argparse
import base64
import io
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._support import TINY_NETS  # noqa: E402
from bench.adaptation import DATA_CANDIDATES, Drift, site_and_users  # noqa: E402
from facefleet.nn.backbones import Backbone, get_backbone  # noqa: E402
from facefleet.nn.distill import (  # noqa: E402
    cross_pair_verdicts,
    distillation_losses,
    embedding_distance_loss,
    inspection_scores,
    pair_scores,
    similarity_structure_loss,
)
from facefleet.nn.heads import DatasetAwareMarginHead  # noqa: E402
from facefleet.nn.verification import fuse_flip, verification_metrics  # noqa: E402
from facefleet.platform.runs.schemas import DistillConfig, HeadConfig  # noqa: E402

TRAIN_IDS, FIELD_IDS, VALIDATION_IDS = 200, 28, 8  # the last 8 field users validate format 2's settings
BATCH, PAIR_BATCH = 64, 32
# a field user's photos 1-9 are inspected; when they come back, 10-11 validate format 2's settings, 12-13 test
INSPECTED_PHOTOS, RETURNING_VALIDATION_PHOTOS, RETURNING_PHOTOS = range(1, 10), range(10, 12), range(12, 14)
# impostor attempts per genuine one for the returning users, by the terminal's other users with photos of the
# same never-inspected range (until stop 32: five, with any photo but the enrolment one, most of them photos
# the inspected student had trained on)
RETURNING_IMPOSTORS = 10
FAR = 0.01


@dataclass
class Attempts:
    reference: torch.Tensor  # [P, 3, S, S] the claimed user's enrolled crop
    attempt: torch.Tensor  # [P, 3, S, S] the attempt crop
    genuine: torch.Tensor  # [P] bool
    undrifted: torch.Tensor | None = None  # [P, 3, S, S] the attempt crops before the drift
    # who, as the inspection set says it (facefleet.workers.distill.read_inspection_set): the claimed
    # user's code, the attempt's (the claimed user's when genuine, else -1), the terminal's
    claimed: torch.Tensor | None = None
    probe: torch.Tensor | None = None
    device: torch.Tensor | None = None


def celeba_points_cached(celeba: Path, cache: Path) -> dict[str, np.ndarray]:
    """MTCNN's five points per photo (``relpath -> points``), computed once and kept in ``cache`` (JSON in
    the format of a registration's alignment.json, so that file can be given instead)."""
    import json

    if cache.is_file():
        outcomes = json.loads(cache.read_text())
        return {o["path"]: np.asarray(o["points"]) for o in outcomes if o["status"] == "aligned"}
    from multiprocessing import Pool

    photos = sorted(celeba.glob("*/*.jpg"))
    with Pool(2) as pool:  # two processes: MTCNN on 3,500 photos is the slow part of a first run
        found = pool.map(_detect_points, [photos[i::2] for i in range(2)])
    points = {k: v for part in found for k, v in part.items()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    outcomes = [{"path": k, "status": "aligned", "points": v.tolist()} for k, v in sorted(points.items())]
    cache.write_text(json.dumps(outcomes))
    return points


def _detect_points(photos: list[Path]) -> dict[str, np.ndarray]:
    """MTCNN's five points of the chosen face of each photo, detected at half size (2.7x faster here; the
    photos' long side is <= 400 px, faces stay far above MTCNN's smallest) and scaled back."""
    from facefleet.faces.aligner import MTCNNAligner
    from facefleet.faces.onnx_export import export_mtcnn, onnx_runners

    found = {}
    with tempfile.TemporaryDirectory(prefix="facefleet-mtcnn-") as tmp:
        export_mtcnn(Path(tmp))
        aligner = MTCNNAligner(onnx_runners(Path(tmp)))
        for photo in photos:
            with Image.open(photo) as opened:
                image = opened.convert("RGB")
            small = image.resize((image.width // 2, image.height // 2), Image.Resampling.BILINEAR)
            outcome = aligner.align(small)
            if outcome.points is not None:
                found[f"{photo.parent.name}/{photo.name}"] = np.asarray(outcome.points) * 2.0
    return found


def crop(path: Path, size: int, points: dict[str, np.ndarray] | None = None) -> Image.Image | None:
    """The aligned face (five points -> ArcFace template) when ``points`` are given (None: no face found),
    else the fixed centre crop."""
    image = Image.open(path).convert("RGB")
    if points is not None:
        from facefleet.faces.align import align_points

        five = points.get(f"{path.parent.name}/{path.name}")
        if five is None:
            return None
        return align_points(image, five).resize((size, size), Image.Resampling.BILINEAR)
    side = int(min(image.size) * 0.6)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BILINEAR)


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    array = np.stack([np.asarray(i, dtype=np.float32) for i in images]) / 127.5 - 1.0
    return torch.from_numpy(array.transpose(0, 3, 1, 2).copy())


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def attempts_of(
    people: list[list[Image.Image]],
    drifts: list[Drift],
    rng: np.random.Generator,
    photos: range,
    impostors: int = 1,
    impostor_photos: range | None = None,
) -> Attempts:
    """Per user: genuine attempts (own photos, drifted) and ``impostors`` times as many impostor attempts
    (others, drifted). ``impostor_photos``: which of the others' photos impostors use (default: any but the
    enrolment photo 0); the returning users' sets pass their own never-inspected range, so no impostor
    attempt reuses a photo the inspected student trained on."""
    refs, tries, same, plain, claimed = [], [], [], [], []
    for user, person in enumerate(people):
        for index in photos:
            if index >= len(person):
                continue
            refs.append(person[0])
            tries.append(drifts[user].apply(person[index], float(rng.uniform(0.3, 0.6))))
            plain.append(person[index])
            same.append(True)
            claimed.append(user)
            for _ in range(impostors):
                first = 1 if impostor_photos is None else impostor_photos.start
                others = [k for k in range(len(people)) if k != user and len(people[k]) > first]
                other = int(rng.choice(others))
                stop = len(people[other]) if impostor_photos is None else impostor_photos.stop
                photo = people[other][int(rng.integers(first, min(stop, len(people[other]))))]
                refs.append(person[0])
                tries.append(drifts[other].apply(photo, float(rng.uniform(0.3, 0.6))))
                plain.append(photo)
                same.append(False)
                claimed.append(user)
    users = torch.tensor(claimed, dtype=torch.long)
    verdicts = torch.tensor(same)
    return Attempts(
        to_tensor(refs),
        to_tensor(tries),
        verdicts,
        to_tensor(plain),
        users,
        torch.where(verdicts, users, -1),
        torch.zeros_like(users),
    )


def collected(
    sets: dict[str, Attempts], scorer: Backbone, threshold: float, root: Path
) -> dict[str, Attempts]:
    """The attempts as the platform gets them: per set one terminal of its own group, running the teacher,
    with collection on; each attempt is uploaded through ``record_attempt`` (what ``POST
    /v1/device/attempts`` calls: PNG crops, the teacher's score and decision at its card threshold), labelled
    from ground truth by ``label_attempt_audited`` (a scripted inspector), packed by
    ``create_inspection_set`` and read back with the distill worker's loader. SQLite + a local store in
    ``root``; the crops survive the trip exactly (uint8 PNG), which is checked."""
    from sqlalchemy.orm import Session

    from facefleet.platform.db import migrate
    from facefleet.platform.db.base import utcnow
    from facefleet.platform.db.models import Deployment, Device, DeviceDeployment, ModelVersion
    from facefleet.platform.db.session import make_engine
    from facefleet.platform.inspections import service as inspections
    from facefleet.platform.inspections.schemas import AttemptUpload, CollectionSettings
    from facefleet.platform.inspections.sets import create_inspection_set
    from facefleet.platform.store.local import LocalStore
    from facefleet.workers.distill import read_inspection_set

    def png(image: torch.Tensor) -> str:
        array = ((image.permute(1, 2, 0).numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
        out = io.BytesIO()
        Image.fromarray(array).save(out, format="PNG")
        return base64.b64encode(out.getvalue()).decode()

    url = f"sqlite:///{root / 'bench.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    store = LocalStore(root / "store")
    out: dict[str, Attempts] = {}
    codes: dict[str, int] = {}
    try:
        with Session(engine) as session:
            model = ModelVersion(name="bench-teacher", version=1, artifacts={}, eval_summary={})
            session.add(model)
            session.flush()
            for name, attempts in sets.items():
                device = Device(name=f"{name}-terminal", group=name, status="active", health={})
                session.add(device)
                session.flush()
                deployment = Deployment(model_version_id=model.id, group=name, status="completed")
                session.add(deployment)
                session.flush()
                session.add(
                    DeviceDeployment(deployment_id=deployment.id, device_id=device.id, status="installed")
                )
                device.model_version_id = model.id
                inspections.set_collection_audited(
                    session,
                    group=name,
                    settings=CollectionSettings(attempts="all", sample_rate=1.0),
                    actor="bench",
                )
                scores = scores_of(scorer, attempts)
                now = utcnow()
                for i, score in enumerate(scores):
                    body = AttemptUpload(
                        model_version_id=model.id,
                        user=f"user-{int(attempts.claimed[i])}" if attempts.claimed is not None else "user",
                        score=float(np.clip(score, -1.0, 1.0)),
                        decision="accept" if score >= threshold else "reject",
                        threshold=float(threshold),
                        captured_at=now,
                        probe_png_b64=png(attempts.attempt[i]),
                        reference_png_b64=png(attempts.reference[i]),
                    )
                    row = inspections.record_attempt(
                        session, store, device, body, max_bytes=1 << 22, rate_per_hour=10**9, now=now
                    )
                    verdict: Literal["genuine", "impostor"] = (
                        "genuine" if bool(attempts.genuine[i]) else "impostor"
                    )
                    inspections.label_attempt_audited(
                        session, attempt_id=row.id, verdict=verdict, actor="bench"
                    )
                version = create_inspection_set(session, store, name=name, device_ids=[device.id])
                session.commit()
                assert version.manifest_key is not None
                pairs_key = version.manifest_key.replace("manifest.parquet", "pairs.parquet")
                size = int(attempts.reference.shape[-1])
                read = read_inspection_set(store, version.manifest_key, pairs_key, size, codes)
                back = Attempts(
                    read.reference,
                    read.attempt,
                    read.genuine.bool(),
                    attempts.undrifted,
                    read.claimed,
                    read.probe,
                    read.device,
                )
                if not (
                    torch.equal(back.genuine, attempts.genuine)
                    and torch.allclose(back.reference, attempts.reference, atol=1e-5)
                    and torch.allclose(back.attempt, attempts.attempt, atol=1e-5)
                ):
                    raise RuntimeError(f"{name}: the inspection set does not read back as the attempts sent")
                out[name] = back
    finally:
        engine.dispose()
    return out


def clean_pairs(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    same = [(i, j) for i in range(len(labels)) for j in range(i + 1, len(labels)) if labels[i] == labels[j]]
    diff: set[tuple[int, int]] = set()
    while len(diff) < 4 * len(same):
        i, j = (int(x) for x in rng.integers(0, len(labels), 2))
        if labels[i] != labels[j]:
            diff.add((min(i, j), max(i, j)))
    pairs = same + sorted(diff)
    left, right = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    return left, right, np.array([True] * len(same) + [False] * len(diff))


def flip_some(images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], torch.flip(images, dims=[3]), images), flip


def train_arcface(
    net: Backbone, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int, margin: tuple[float, float]
) -> Backbone:
    """ArcFace (``margin`` = (s, m); the product's defaults unless --scale / --margin) on one dataset's
    labels, AdamW + one-cycle, random flips."""
    torch.manual_seed(seed)
    scale, angle = margin
    head = DatasetAwareMarginHead(net.embedding_dim, [int(y.max()) + 1], kind="arcface", s=scale, m2=angle)
    params = [*net.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=3e-3, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    zeros = torch.zeros(BATCH, dtype=torch.long)
    net.train()
    for _ in range(steps):
        index = torch.randint(0, len(x), (BATCH,), generator=generator)
        images, _ = flip_some(resize(x[index], net.input_size), generator)
        loss = head(net(images), y[index], zeros)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return net.eval()


@torch.no_grad()
def embed(net: Backbone, images: torch.Tensor) -> torch.Tensor:
    net.eval()
    return torch.cat(
        [fuse_flip(net, resize(images[i : i + 256], net.input_size)) for i in range(0, len(images), 256)]
    )


@dataclass
class Format2:
    """How the inspection arm weighs and calibrates format 2 (the run's ``distill.*`` fields)."""

    weight: float = 1.0
    temperature: float = 0.05
    calibration: str = "teacher"
    # "": format 2 alone; "anchor": format 1 on the inspected crops too (the teacher's embedding of each
    # crop); "reference": a genuine verdict makes the teacher's embedding of the *reference* the attempt's
    # target (the inspector says it is that person), impostor crops are anchored to their own
    anchor: str = ""
    # every reference of a pair batch against every confirmed attempt (distill.cross_pairs)
    cross: bool = False
    impostor_share: float = 0.5

    def label(self) -> str:
        extra = {
            "": "",
            "anchor": ", + format 1 on the crops",
            "reference": ", + genuine attempts to the teacher's reference",
        }[self.anchor]
        cross = ", cross pairs" if self.cross else ""
        share = f", impostors {self.impostor_share:g}" if self.impostor_share != 0.5 else ""
        return f"w {self.weight:g}, T {self.temperature:g}, {self.calibration}{extra}{cross}{share}"


_RUN_DEFAULTS = DistillConfig()
DEFAULT_FORMAT2 = Format2(
    _RUN_DEFAULTS.inspection_weight,
    _RUN_DEFAULTS.temperature,
    _RUN_DEFAULTS.calibration,
    cross=_RUN_DEFAULTS.cross_pairs,
    impostor_share=_RUN_DEFAULTS.impostor_share,
)  # the distill run's defaults


def train_distilled(
    net: Backbone,
    x: torch.Tensor,
    teacher_plain: torch.Tensor,
    teacher_flipped: torch.Tensor,
    steps: int,
    seed: int,
    inspection: Attempts | None,
    threshold: float,
    format2: Format2 | None = None,
    teacher: Backbone | None = None,
) -> Backbone:
    """Format 1 against the teacher's (precomputed, per flip) embeddings; format 2 on inspection pairs."""
    format2 = format2 or Format2()
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        index = torch.randint(0, len(x), (BATCH,), generator=generator)
        images, flipped = flip_some(resize(x[index], net.input_size), generator)
        target = torch.where(flipped[:, None], teacher_flipped[index], teacher_plain[index])
        scores = same = decided = anchor_loss = None
        if inspection is not None:
            pick = torch.randint(0, len(inspection.genuine), (PAIR_BATCH,), generator=generator)
            both, _ = flip_some(torch.cat([inspection.reference[pick], inspection.attempt[pick]]), generator)
            # one forward for the image batch and the pairs: BatchNorm sees one batch, as in the run
            out = net(torch.cat([images, resize(both, net.input_size)]))
            student, pairs = out[:BATCH], out[BATCH:]
            same = inspection.genuine[pick]
            verdicts = same
            if format2.cross:
                assert inspection.claimed is not None and inspection.probe is not None
                assert inspection.device is not None
                verdicts = cross_pair_verdicts(
                    inspection.claimed[pick], inspection.probe[pick], inspection.device[pick], same
                )
            scores, decided = inspection_scores(pairs[:PAIR_BATCH], pairs[PAIR_BATCH:], verdicts)
            if format2.anchor and teacher is not None:
                with torch.no_grad():
                    anchors = teacher.eval()(resize(both, teacher.input_size))
                if format2.anchor == "anchor":
                    anchor_loss = embedding_distance_loss(pairs, anchors) + similarity_structure_loss(
                        pairs, anchors
                    )
                else:  # the reference's teacher embedding is the genuine attempt's target
                    refs = anchors[:PAIR_BATCH]
                    tries = torch.where(same[:, None], refs, anchors[PAIR_BATCH:])
                    anchor_loss = embedding_distance_loss(pairs, torch.cat([refs, tries]))
        else:
            student = net(images)
        losses = distillation_losses(
            student,
            target,
            inspection_scores=scores,
            inspection_same=decided,
            threshold=threshold,
            temperature=format2.temperature,
            inspection_weight=format2.weight,
            calibration=format2.calibration,
            impostor_share=format2.impostor_share,
        )
        loss = losses["loss"] + (anchor_loss if anchor_loss is not None else 0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return net.eval()


def scores_of(net: Backbone, attempts: Attempts) -> np.ndarray:
    return pair_scores(embed(net, attempts.reference), embed(net, attempts.attempt)).numpy()


def evaluate(net: Backbone, clean: torch.Tensor, pairs: tuple, held: Attempts) -> dict[str, float]:
    left, right, same = pairs
    emb = embed(net, clean)
    scores = (emb[left] * emb[right]).sum(1).numpy()
    metrics = verification_metrics(scores, same, operating_far=FAR)
    threshold = float(metrics.threshold_at_operating_far)
    attempt_scores = scores_of(net, held)
    genuine = held.genuine.numpy()
    return {
        "auc": float(metrics.auc),
        "tar": float(metrics.tar_at_operating_far),
        "threshold": threshold,
        # how well the drifted attempts' scores separate genuine from impostor, at any threshold
        "attempt_auc": float(verification_metrics(attempt_scores, genuine, operating_far=FAR).auc),
        "false_rejects": int((attempt_scores[genuine] < threshold).sum()),
        "genuine": int(genuine.sum()),
        "false_accepts": int((attempt_scores[~genuine] >= threshold).sum()),
        "impostors": int((~genuine).sum()),
        "scores": attempt_scores,  # type: ignore[dict-item]
        # the floor of what undoing the drift can reach: the same genuine pairs, undrifted
        "fr_undrifted": (
            int(
                (
                    scores_of(net, Attempts(held.reference, held.undrifted, held.genuine))[genuine]
                    < threshold
                ).sum()
            )
            if held.undrifted is not None
            else -1
        ),
    }


def latency_ms(net: Backbone, folder: Path, name: str, runs: int = 200) -> float:
    import onnxruntime

    from facefleet.workers.export import write_onnx

    path = folder / f"{name}.onnx"
    write_onnx(net.eval(), net.input_size, path)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).uniform(-1, 1, (1, 3, net.input_size, net.input_size)).astype(np.float32)
    for _ in range(20):
        session.run(None, {"images": image})
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, {"images": image})
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


def load_photos(args: argparse.Namespace) -> tuple[list[list[Image.Image]], str]:
    """Per identity (sorted by name) its crops at the teacher's size; identities with < 3 faces dropped
    when aligned. Sources, first that applies: --unaligned (centre crops); --aligned-cache (112x112 PNGs
    made by bench/real_faces_data.py, the product's MTCNN aligner at full size); MTCNN points (cached)."""
    people_dirs = sorted(p for p in args.data.iterdir() if p.is_dir())
    size = args.teacher_size
    if args.unaligned:
        photos = [
            [c for f in sorted(d.glob("*.jpg")) if (c := crop(f, size)) is not None] for d in people_dirs
        ]
        return photos, "centre crops, NOT aligned"
    cache = args.aligned_cache
    if cache is not None and (cache / "done.json").is_file():
        photos = [
            [
                Image.open(f).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
                for f in sorted((cache / d.name).glob("*.png"))
            ]
            for d in people_dirs
        ]
        how = f"MTCNN-aligned, crops from {cache}"
    else:
        points = celeba_points_cached(args.data, args.points_cache)
        photos = [
            [c for f in sorted(d.glob("*.jpg")) if (c := crop(f, size, points)) is not None]
            for d in people_dirs
        ]
        how = "MTCNN-aligned (cached points)"
    return [p for p in photos if len(p) >= 3], how


def teacher_for(args: argparse.Namespace, seed: int, x: torch.Tensor, y: torch.Tensor, how: str) -> Backbone:
    """The seed's teacher, trained once and kept under --teacher-cache (safetensors; weights only)."""
    from safetensors.torch import load_file, save_file

    kw = {"width": args.teacher_width} if args.teacher_backbone in TINY_NETS else {}
    torch.manual_seed(seed)
    teacher = get_backbone(
        args.teacher_backbone, embedding_dim=args.embedding_dim, input_size=args.teacher_size, **kw
    )
    tag = "unaligned" if args.unaligned else ("cache" if "crops from" in how else "points")
    name = (
        f"{args.teacher_backbone}-w{args.teacher_width}-{args.teacher_size}px-{args.teacher_steps}steps-"
        f"d{args.embedding_dim}-s{args.scale:g}-m{args.margin:g}-{tag}-seed{seed}.safetensors"
    )
    path = args.teacher_cache / name if args.teacher_cache is not None else None
    if path is not None and path.is_file():
        teacher.load_state_dict(load_file(str(path)))
        return teacher.eval()
    teacher = train_arcface(teacher, x, y, args.teacher_steps, seed, (args.scale, args.margin))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(path))
    return teacher


def run_seed(
    args: argparse.Namespace,
    seed: int,
    photos: list[list[Image.Image]],
    how: str,
    say: Callable[[str], None],
) -> tuple[dict[str, dict], dict[str, dict[str, dict]], dict[str, dict], float]:
    """One seed: teacher, three students (plus any extra format-2 settings); held-out results, validation
    results (``users``: the validation field users; ``returning``: the inspected users' validation photos,
    both at thresholds from the validation users' clean pairs) and returning-user results per model, and
    the teacher card's threshold."""
    train_people = photos[:TRAIN_IDS]
    field = photos[TRAIN_IDS : TRAIN_IDS + FIELD_IDS]
    held = photos[TRAIN_IDS + FIELD_IDS :]
    inspected_users, validation_users = (
        field[: FIELD_IDS - VALIDATION_IDS],
        field[FIELD_IDS - VALIDATION_IDS :],
    )
    x = to_tensor([i for p in train_people for i in p])
    y = torch.tensor([k for k, p in enumerate(train_people) for _ in p])
    rng = np.random.default_rng(seed)
    drifts = site_and_users(rng, len(field) + len(held))  # one site: field and held-out users share it
    inspection = attempts_of(inspected_users, drifts[: len(inspected_users)], rng, INSPECTED_PHOTOS)
    validation_attempts = attempts_of(
        validation_users, drifts[len(inspected_users) : len(field)], rng, range(1, 14)
    )
    held_attempts = attempts_of(held, drifts[len(field) :], rng, range(1, 14))
    # the inspected users coming back: their later photos (never inspected), same site and own drift; its
    # own generator, so the sets above are drawn exactly as before it existed
    returning = attempts_of(
        inspected_users,
        drifts[: len(inspected_users)],
        np.random.default_rng([seed, 13]),
        RETURNING_PHOTOS,
        RETURNING_IMPOSTORS,
        RETURNING_PHOTOS,
    )
    returning_validation = attempts_of(
        inspected_users,
        drifts[: len(inspected_users)],
        np.random.default_rng([seed, 14]),
        RETURNING_VALIDATION_PHOTOS,
        RETURNING_IMPOSTORS,
        RETURNING_VALIDATION_PHOTOS,
    )

    def clean_set(people: list[list[Image.Image]]) -> tuple[torch.Tensor, tuple]:
        images = to_tensor([i for p in people for i in p])
        return images, clean_pairs(np.array([k for k, p in enumerate(people) for _ in p]), rng)

    clean, pairs = clean_set(held)
    val_clean, val_pairs = clean_set(validation_users)
    say(
        f"seed {seed}: {len(photos)} identities: {len(x)} training images ({TRAIN_IDS} ids); inspection set "
        f"{len(inspection.genuine)} attempts ({len(inspected_users)} field users, half genuine); validation: "
        f"{len(validation_users)} field users, {len(val_pairs[2])} clean pairs, "
        f"{len(validation_attempts.genuine)} drifted attempts; held out: {len(held)} users, "
        f"{len(pairs[2])} clean pairs, {len(held_attempts.genuine)} drifted attempts"
    )
    teacher = teacher_for(args, seed, x, y, how)
    card_threshold = evaluate(teacher, clean, pairs, held_attempts)["threshold"]  # clean pairs only
    with tempfile.TemporaryDirectory(prefix="facefleet-bench-collect-") as tmp:
        through = collected(
            {"field-inspected": inspection, "held-out-attempts": held_attempts, "returning": returning},
            teacher,
            card_threshold,
            Path(tmp),
        )
    inspection, held_attempts = through["field-inspected"], through["held-out-attempts"]
    returning = through["returning"]
    say(
        f"attempts through the collection path (record_attempt, label_attempt_audited, "
        f"create_inspection_set): {len(inspection.genuine)} field, {len(held_attempts.genuine)} held out, "
        f"{len(returning.genuine)} of the inspected users coming back"
    )
    with torch.no_grad():
        teacher.eval()
        plain = torch.cat([teacher(x[i : i + 256]) for i in range(0, len(x), 256)])
        flipped = torch.cat([teacher(torch.flip(x[i : i + 256], dims=[3])) for i in range(0, len(x), 256)])

    def student() -> Backbone:
        torch.manual_seed(seed + 1)
        return get_backbone(
            args.student_backbone, embedding_dim=args.embedding_dim, input_size=args.student_size, width=16
        )

    steps = args.student_steps
    arms: dict[str, Callable[[], Backbone]] = {
        "student, scratch": lambda: train_arcface(student(), x, y, steps, seed, (args.scale, args.margin)),
        "student, distilled": lambda: train_distilled(
            student(), x, plain, flipped, steps, seed, None, card_threshold
        ),
    }

    def inspected(f2: Format2) -> Callable[[], Backbone]:
        return lambda: train_distilled(
            student(), x, plain, flipped, steps, seed, inspection, card_threshold, f2, teacher
        )

    for k, f2 in enumerate(args.format2):
        arms["student, distilled + inspection" + ("" if k == 0 else f" ({f2.label()})")] = inspected(f2)
    nets: dict[str, Backbone] = {"teacher": teacher}
    held_results = {"teacher": evaluate(teacher, clean, pairs, held_attempts)}
    val_results = {"teacher": evaluate(teacher, val_clean, val_pairs, validation_attempts)}
    back_results = {"teacher": evaluate(teacher, clean, pairs, returning)}
    back_val = {"teacher": evaluate(teacher, val_clean, val_pairs, returning_validation)}
    for name, train in arms.items():
        nets[name] = train()
        held_results[name] = evaluate(nets[name], clean, pairs, held_attempts)
        back_results[name] = evaluate(nets[name], clean, pairs, returning)
        back_val[name] = evaluate(nets[name], val_clean, val_pairs, returning_validation)
        val_results[name] = evaluate(nets[name], val_clean, val_pairs, validation_attempts)
        say(
            f"seed {seed} {name}: AUC {held_results[name]['auc']:.3f}; validation FR "
            f"{val_results[name]['false_rejects']} FA {val_results[name]['false_accepts']}"
        )
    with tempfile.TemporaryDirectory(prefix="facefleet-bench-distill-") as tmp:
        latency = {
            "teacher": latency_ms(teacher, Path(tmp), "teacher"),
            "student": latency_ms(nets["student, scratch"], Path(tmp), "student"),
        }
    for name, r in held_results.items():
        r["ms"] = latency["teacher"] if name == "teacher" else latency["student"]
        at_teacher = np.asarray(r["scores"]) >= card_threshold
        genuine = held_attempts.genuine.numpy()
        r["fr_teacher"] = int((~at_teacher[genuine]).sum())
        r["fa_teacher"] = int(at_teacher[~genuine].sum())
    return held_results, {"users": val_results, "returning": back_val}, back_results, card_threshold


def num(value: float) -> str:
    """A count as an integer, a mean of counts with one decimal."""
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def print_table(title: str, results: dict[str, dict], *, latency: bool = True) -> None:
    print(f"\n{title}")
    header = (
        "| model | AUC | TAR @ FAR 1% | threshold | false rejects (drifted genuine) | same pairs undrifted "
        "| false accepts | attempts AUC |"
    )
    rule = "|---|---|---|---|---|---|---|---|"
    if latency:
        header += " FR / FA at the teacher's threshold | ms (ORT, 1 thread) |"
        rule += "---|---|"
    print(header)
    print(rule)
    for name, r in results.items():
        row = (
            f"| {name} | {r['auc']:.3f} | {r['tar']:.3f} | {r['threshold']:.3f} | "
            f"{num(r['false_rejects'])} / {num(r['genuine'])} | {num(r['fr_undrifted'])} | "
            f"{num(r['false_accepts'])} / {num(r['impostors'])} | {r['attempt_auc']:.3f} |"
        )
        if latency:
            row += f" {num(r['fr_teacher'])} / {num(r['fa_teacher'])} | {r['ms']:.2f} |"
        print(row)


def mean_of(per_seed: list[dict[str, dict]]) -> dict[str, dict]:
    keys = (
        "auc",
        "attempt_auc",
        "tar",
        "threshold",
        "false_rejects",
        "fr_undrifted",
        "genuine",
        "false_accepts",
        "impostors",
    )
    keys_all = (*keys, "fr_teacher", "fa_teacher", "ms")
    out = {}
    for name in per_seed[0]:
        present = [k for k in keys_all if k in per_seed[0][name]]
        out[name] = {k: float(np.mean([r[name][k] for r in per_seed])) for k in present}
    return out


def verdicts(results: dict[str, dict], inspected_name: str) -> str:
    scratch, distilled, inspected = (
        results[k] for k in ("student, scratch", "student, distilled", inspected_name)
    )
    gap = results["teacher"]["auc"] - scratch["auc"]
    closed = (distilled["auc"] - scratch["auc"]) / gap if gap > 0 else float("nan")
    fewer = 1 - inspected["false_rejects"] / max(distilled["false_rejects"], 1)
    ratio = results["student, scratch"]["ms"] / results["teacher"]["ms"]
    reachable = 1 - distilled["fr_undrifted"] / max(distilled["false_rejects"], 1)

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    return (
        f"AUC gap closed by distillation: {closed:.0%} (target >= 50%: {verdict(closed >= 0.5)}; "
        f"teacher - scratch gap {gap:+.3f})\n"
        f"unseen users (no inspector saw them), false rejects with inspection: "
        f"{num(distilled['false_rejects'])} -> {num(inspected['false_rejects'])} "
        f"({fewer:.0%} fewer; target >= 30%: {verdict(fewer >= 0.3)}), false accepts "
        f"{num(distilled['false_accepts'])} -> {num(inspected['false_accepts'])} "
        f"(target not more: {verdict(inspected['false_accepts'] <= distilled['false_accepts'])}); "
        f"the distilled student rejects {num(distilled['fr_undrifted'])} of the same genuine pairs "
        f"undrifted: "
        f"undoing the drift entirely would cut its false rejects by {reachable:.0%}\n"
        f"student / teacher latency: {ratio:.2f} (target <= 0.3: {verdict(ratio <= 0.3)})"
    )


def returning_verdict(results: dict[str, dict], inspected_name: str) -> str:
    distilled, inspected = results["student, distilled"], results[inspected_name]
    fewer = 1 - inspected["false_rejects"] / max(distilled["false_rejects"], 1)
    ok = fewer >= 0.3 and inspected["false_accepts"] <= distilled["false_accepts"]
    return (
        f"returning users (the inspected users' later photos, never inspected): false rejects "
        f"{num(distilled['false_rejects'])} -> {num(inspected['false_rejects'])} ({fewer:.0%} fewer), false "
        f"accepts {num(distilled['false_accepts'])} -> {num(inspected['false_accepts'])} "
        f"(target >= 30% fewer, no more false accepts: {'met' if ok else 'MISSED'})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=next((p for p in DATA_CANDIDATES if p.is_dir()), None))
    parser.add_argument("--teacher-backbone", default="tiny")
    parser.add_argument("--teacher-width", type=int, default=32, help="tiny and tiny_gdc only")
    parser.add_argument("--student-backbone", choices=TINY_NETS, default="tiny", help="width 16")
    parser.add_argument("--teacher-size", type=int, default=48)
    parser.add_argument("--teacher-steps", type=int, default=600)
    parser.add_argument("--student-size", type=int, default=32)
    parser.add_argument("--student-steps", type=int, default=250)
    parser.add_argument("--embedding-dim", type=int, default=128)
    parser.add_argument(
        "--scale", type=float, default=HeadConfig().s, help="ArcFace s of teacher and scratch student"
    )
    parser.add_argument("--margin", type=float, default=HeadConfig().m2, help="ArcFace m (angular)")
    parser.add_argument("--seed", type=int, default=0, help="the first seed")
    parser.add_argument("--seeds", type=int, default=1, help="how many seeds (seed, seed+1, ...)")
    parser.add_argument(
        "--format2",
        default=f"{DEFAULT_FORMAT2.weight}:{DEFAULT_FORMAT2.temperature}:{DEFAULT_FORMAT2.calibration}",
        help="comma-separated weight:temperature:calibration (teacher|batch) settings of format 2, each "
        "optionally followed by :anchor or :reference, :cross or :plain (cross pairs on / off; default: the "
        "run's cross_pairs) and :impS (impostor share S; default: the run's impostor_share), "
        "one inspection arm each; the first is the one the targets are judged on (default: the run's "
        "defaults)",
    )
    parser.add_argument("--unaligned", action="store_true", help="centre crops instead of MTCNN alignment")
    parser.add_argument(
        "--aligned-cache",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "aligned" / "celeba_ids",
        help="aligned 112x112 crops of celeba_ids from bench/real_faces_data.py, used when its done.json "
        "exists (else MTCNN points are computed / read from --points-cache)",
    )
    parser.add_argument(
        "--points-cache",
        type=Path,
        default=Path(".facefleet/bench/celeba_points.json"),
        help="MTCNN points of celeba_ids (made on the first run; or a registration's alignment.json)",
    )
    parser.add_argument(
        "--teacher-cache",
        type=Path,
        default=Path(".facefleet/bench/teachers"),
        help="trained teachers kept per settings and seed (safetensors)",
    )
    args = parser.parse_args()
    if args.data is None or not args.data.is_dir():
        parser.error("celeba_ids not found; give --data DIR (../shared/benchdata/celeba_ids)")
    items = [item.split(":") for item in args.format2.split(",")]
    flags = [x for item in items for x in item[3:]]
    try:
        args.format2 = [
            Format2(
                float(w),
                float(t),
                c,
                next((x for x in extra if x in ("anchor", "reference")), ""),
                "cross" in extra or ("plain" not in extra and DEFAULT_FORMAT2.cross),
                next((float(x[3:]) for x in extra if x.startswith("imp")), DEFAULT_FORMAT2.impostor_share),
            )
            for w, t, c, *extra in items
        ]
    except ValueError:
        parser.error("--format2: give weight:temperature:calibration, e.g. 0.3:0.1:batch")
    if any(f.calibration not in ("teacher", "batch") or f.temperature <= 0 for f in args.format2) or any(
        x not in ("anchor", "reference", "cross", "plain") and not x.startswith("imp") for x in flags
    ):
        parser.error(
            "--format2: calibration is teacher or batch, temperature > 0, then any of anchor or reference, "
            "cross (cross pairs) or plain (none), impS (impostor share S)"
        )
    torch.set_num_threads(1)
    started = time.time()

    def say(text: str) -> None:
        print(f"[{time.time() - started:5.0f}s] {text}", flush=True)

    photos, how = load_photos(args)
    say(f"{how}: {len(photos)} identities")
    held_all, val_all, back_all = [], [], []
    for seed in range(args.seed, args.seed + args.seeds):
        held, val, back, threshold = run_seed(args, seed, photos, how, say)
        held_all.append(held)
        val_all.append(val)
        back_all.append(back)
        desc = (
            f"celeba_ids ({how}), seed {seed}; teacher {args.teacher_backbone}"
            f"{f' w{args.teacher_width}' if args.teacher_backbone in TINY_NETS else ''} "
            f"@ {args.teacher_size}px, "
            f"{args.teacher_steps} steps (card threshold {threshold:.3f}); students "
            f"{args.student_backbone} w16 @ "
            f"{args.student_size}px, {args.student_steps} steps x {BATCH} each; first inspection arm: "
            f"{args.format2[0].label()}"
        )
        print_table(f"Held out, {desc}; thresholds at FAR 1% on the clean held-out pairs", held)
        print_table(
            f"Validation (field users not in the inspection set), seed {seed}; thresholds at FAR 1% on "
            "their clean pairs",
            val["users"],
            latency=False,
        )
        print_table(
            f"Validation, returning users (the inspected users' photos {RETURNING_VALIDATION_PHOTOS.start}-"
            f"{RETURNING_VALIDATION_PHOTOS.stop - 1}), seed {seed}; thresholds as validation",
            val["returning"],
            latency=False,
        )
        print_table(
            f"Returning users (the {FIELD_IDS - VALIDATION_IDS} inspected field users' later photos "
            f"{RETURNING_PHOTOS.start}-{RETURNING_PHOTOS.stop - 1}, never inspected), seed {seed}; "
            "thresholds as held out",
            back,
            latency=False,
        )
        print(verdicts(held, "student, distilled + inspection"), flush=True)
        for name in (k for k in back if k.startswith("student, distilled + inspection")):
            print(f"{name}: {returning_verdict(back, name)}", flush=True)
    if args.seeds > 1:
        held_mean, back_mean = mean_of(held_all), mean_of(back_all)
        print_table(f"Held out, mean of {args.seeds} seeds", held_mean)
        for part in ("users", "returning"):
            print_table(
                f"Validation ({part}), mean of {args.seeds} seeds",
                mean_of([v[part] for v in val_all]),
                latency=False,
            )
        print_table(f"Returning users, mean of {args.seeds} seeds", back_mean, latency=False)
        print(verdicts(held_mean, "student, distilled + inspection"))
        for name in (k for k in back_mean if k.startswith("student, distilled + inspection")):
            print(f"{name}: {returning_verdict(back_mean, name)}")
    print(f"total {time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
