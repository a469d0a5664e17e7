"""Benchmark: five-point landmarks (NME, failures, ms/face) and what alignment buys (verification AUC).

Part 1 - facefleet's landmark model (seed 001) is trained the way the platform trains it: HELEN registered
as a ``landmarks`` dataset, a ``kind: landmarks`` run (runs service, Ray Train local mode, ONNX, registry).
Part 2 - on HELEN's fixed held-out split (SHA-256 of the file name mod 5 == 0), MTCNN's points and ours from
the same MTCNN box: NME = mean point error / outer-eye-corner distance (points 36, 45 of the 68-point markup),
failure rate (NME > 0.10), and ms per face with ONNX Runtime on one thread (ours: the network on one crop;
MTCNN: a whole detection of the photo, for scale). Ratios are against MTCNN in the same process.
Part 3 - the same short training run (tiny backbone, ArcFace) on celeba_ids, unaligned (centre crop) vs
aligned (MTCNN five points -> ArcFace template), verification AUC on held-out identities (the last 56 of 256).
Images MTCNN finds no face in are left out of both arms, so both see the same photos.

Run: .venv/bin/python bench/landmarks.py [--alignment-json PATH] [--landmark-steps N] [--recognition-steps N]
``--alignment-json``: the alignment.json of ``datasets register celeba_ids --align`` (skips detecting again).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facefleet.faces.align import align_points
from facefleet.faces.detect import Detection, detect_faces
from facefleet.faces.landmarks import OnnxLandmarkLocator, five_from_68
from facefleet.faces.onnx_export import export_mtcnn, onnx_runners

ROOT = Path(__file__).resolve().parents[1]

BENCHDATA = next(
    (p for p in (ROOT.parent / "shared" / "benchdata", Path("/work/shared/benchdata")) if p.is_dir()),
    ROOT.parent / "shared" / "benchdata",
)


# ------------------------------------------------------------------ part 1: train through the platform


def train_landmark_model(workdir: Path, helen: Path, steps: int, batch: int) -> tuple[bytes, dict, float]:
    """(model.onnx bytes, run summary, crop scale) of a landmarks run on HELEN."""
    os.environ["FACEFLEET_DATABASE_URL"] = f"sqlite:///{workdir / 'bench.db'}"
    os.environ["FACEFLEET_STORE_URL"] = (workdir / "store").as_uri()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from facefleet.platform.datasets import service as datasets
    from facefleet.platform.db import migrate
    from facefleet.platform.db.session import session_scope
    from facefleet.platform.models import service as registry
    from facefleet.platform.runs import service
    from facefleet.platform.settings import get_settings
    from facefleet.platform.store import get_store
    from facefleet.workers.train import run_training

    get_settings.cache_clear()
    migrate.upgrade(os.environ["FACEFLEET_DATABASE_URL"])
    store = get_store()
    config = {
        "kind": "landmarks",
        "model_name": "landmarks",
        "input_size": 64,
        "batch_size": batch,
        "steps": steps,
        "checkpoint_interval": max(steps // 2, 1),
        "metrics_interval": 50,
        "optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 1e-4},
        "landmarks": {"grid": 8, "width": 16},
        "scaling": {"num_workers": 0},
        "max_failures": 0,
    }
    with session_scope() as session:
        datasets.register_dataset_version(session, store, name="helen", source=helen, kind="landmarks")
        run_id = service.create_run(session, dataset_names_or_version_ids=["helen"], config=config).id
    started = time.perf_counter()
    status = run_training(run_id)
    elapsed = time.perf_counter() - started
    with session_scope() as session:
        from facefleet.platform.db.models import Run

        run = session.get(Run, run_id)
        assert run is not None
        if status != "succeeded":
            raise SystemExit(f"the landmarks run {status}: {run.error}")
        summary = dict(run.summary)
        model = registry.get_model_version(session, "landmarks", "latest")
        onnx_bytes = store.get_bytes(str(model.artifacts["model.onnx"]["key"]))
    summary["train_seconds"] = elapsed
    return onnx_bytes, summary, 1.15


# ------------------------------------------------------------------ part 2: NME and latency on held-out HELEN


def annotated(detections: list[Detection], five: np.ndarray) -> Detection | None:
    """The detection holding most of the ground-truth five points (at least four)."""

    def holds(d: Detection) -> int:
        x1, y1, x2, y2 = d.box
        return int(((five[:, 0] >= x1) & (five[:, 0] <= x2) & (five[:, 1] >= y1) & (five[:, 1] <= y2)).sum())

    best = max(detections, key=holds, default=None)
    return best if best is not None and holds(best) >= 4 else None


def nme_68(predicted: np.ndarray, points68: np.ndarray) -> float:
    return float(
        np.linalg.norm(predicted - five_from_68(points68), axis=1).mean()
        / np.linalg.norm(points68[36] - points68[45])
    )


def evaluate_helen(helen: Path, onnx_bytes: bytes, crop_scale: float, mtcnn_dir: Path) -> dict:
    from facefleet.platform.datasets.landmark_data import split_of

    runners = onnx_runners(mtcnn_dir)
    ours = OnnxLandmarkLocator(onnx_bytes, 64, crop_scale)
    rows = []
    detect_ms = []
    missed = 0
    for photo in sorted(helen.glob("*.jpg")):
        if split_of(photo.name) != "test":
            continue
        points68 = np.loadtxt(photo.with_suffix(".pts"))
        with Image.open(photo) as opened:
            image = opened.convert("RGB")
        started = time.perf_counter()
        detections = detect_faces(image, runners)
        detect_ms.append(1000 * (time.perf_counter() - started))
        face = annotated(detections, five_from_68(points68))
        if face is None:
            missed += 1
            continue
        rows.append((nme_68(face.points, points68), nme_68(ours.locate(image, face.box), points68)))
    mtcnn, facefleet = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
    # latency of our network alone on one crop, ONNX Runtime, one thread
    crop = np.random.default_rng(0).uniform(-1, 1, (1, 3, 64, 64)).astype(np.float32)
    for _ in range(20):
        ours.session.run(None, {ours.input_name: crop})
    times = []
    for _ in range(300):
        started = time.perf_counter()
        ours.session.run(None, {ours.input_name: crop})
        times.append(1000 * (time.perf_counter() - started))
    return {
        "faces": len(rows),
        "missed_by_mtcnn": missed,
        "mtcnn_nme": float(mtcnn.mean()),
        "ours_nme": float(facefleet.mean()),
        "mtcnn_failure": float((mtcnn > 0.10).mean()),
        "ours_failure": float((facefleet > 0.10).mean()),
        "ours_ms_median": statistics.median(times),
        "ours_ms_p10": float(np.percentile(times, 10)),
        "mtcnn_detect_ms_median": statistics.median(detect_ms),
    }


# ------------------------------------------------------------------ part 3: aligned vs unaligned


def celeba_points(celeba: Path, alignment_json: Path | None, mtcnn_dir: Path) -> dict[str, np.ndarray]:
    """relpath -> MTCNN's five points of the chosen face (faceless images absent)."""
    if alignment_json is not None:
        outcomes = json.loads(alignment_json.read_text())
        return {o["path"]: np.asarray(o["points"]) for o in outcomes if o["status"] == "aligned"}
    from facefleet.faces.aligner import MTCNNAligner

    aligner = MTCNNAligner(onnx_runners(mtcnn_dir))
    found = {}
    for photo in sorted(celeba.glob("*/*.jpg")):
        with Image.open(photo) as image:
            outcome = aligner.align(image)
        if outcome.points is not None:
            found[f"{photo.parent.name}/{photo.name}"] = outcome.points
    return found


def centre_crop(image: Image.Image) -> Image.Image:
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((112, 112), Image.Resampling.BILINEAR)


def to_tensor(images: list[Image.Image], size: int) -> torch.Tensor:
    arrays = [np.asarray(i.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) for i in images]
    return torch.from_numpy((np.stack(arrays) / 255.0 - 0.5) / 0.5).permute(0, 3, 1, 2).contiguous()


def train_and_score(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: np.ndarray,
    steps: int,
    seed: int,
) -> float:
    from facefleet.nn.backbones import get_backbone
    from facefleet.nn.heads import DatasetAwareMarginHead
    from facefleet.nn.verification import fuse_flip, verification_metrics

    torch.manual_seed(seed)
    classes = int(train_y.max()) + 1
    net = get_backbone("tiny", embedding_dim=128, input_size=train_x.shape[-1], width=32)
    head = DatasetAwareMarginHead(128, [classes], kind="arcface", s=32.0, m2=0.3)
    optimizer = torch.optim.AdamW([*net.parameters(), *head.parameters()], lr=3e-3, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    zeros = torch.zeros(64, dtype=torch.long)
    net.train()
    for _ in range(steps):
        index = torch.randint(0, len(train_x), (64,), generator=generator)
        images = train_x[index]
        flip = torch.rand(64, generator=generator) < 0.5
        images = torch.where(flip[:, None, None, None], torch.flip(images, dims=[3]), images)
        loss = head(net(images), train_y[index], zeros)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    net.eval()
    with torch.no_grad():
        embeddings = torch.cat(
            [fuse_flip(net, test_x[i : i + 256]) for i in range(0, len(test_x), 256)]
        ).numpy()
    same_rows = [
        (i, j) for i in range(len(test_y)) for j in range(i + 1, len(test_y)) if test_y[i] == test_y[j]
    ]
    rng = np.random.default_rng(0)
    diff_rows = []
    while len(diff_rows) < 4 * len(same_rows):
        i, j = rng.integers(0, len(test_y), 2)
        if test_y[i] != test_y[j]:
            diff_rows.append((int(i), int(j)))
    pairs = same_rows + diff_rows
    scores = np.array([float(embeddings[i] @ embeddings[j]) for i, j in pairs])
    is_same = np.array([True] * len(same_rows) + [False] * len(diff_rows))
    return float(verification_metrics(scores, is_same).auc)


def aligned_vs_unaligned(
    celeba: Path, points: dict[str, np.ndarray], steps: int, seeds: list[int], input_size: int, held: int
) -> dict:
    identities = sorted(p.name for p in celeba.iterdir() if p.is_dir())
    held_out = set(identities[-held:])
    arms: dict[str, dict[str, list]] = {"unaligned": {}, "aligned": {}}
    for arm in arms.values():
        arm.update(train=[], train_y=[], test=[], test_y=[])
    labels = {name: index for index, name in enumerate(i for i in identities if i not in held_out)}
    for relpath, five in sorted(points.items()):
        identity = relpath.split("/")[0]
        with Image.open(celeba / relpath) as opened:
            image = opened.convert("RGB")
        crops = {"unaligned": centre_crop(image), "aligned": align_points(image, five)}
        for name, crop in crops.items():
            if identity in held_out:
                arms[name]["test"].append(crop)
                arms[name]["test_y"].append(identity)
            else:
                arms[name]["train"].append(crop)
                arms[name]["train_y"].append(labels[identity])
    results: dict[str, list[float]] = {}
    for name, arm in arms.items():
        train_x, test_x = to_tensor(arm["train"], input_size), to_tensor(arm["test"], input_size)
        train_y = torch.tensor(arm["train_y"])
        results[name] = [
            train_and_score(train_x, train_y, test_x, np.array(arm["test_y"]), steps, seed) for seed in seeds
        ]
    return {
        "train_identities": len(labels),
        "train_images": len(arms["aligned"]["train"]),
        "test_images": len(arms["aligned"]["test"]),
        "auc": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--helen", type=Path, default=BENCHDATA / "helen_landmarks" / "testset")
    parser.add_argument("--celeba", type=Path, default=BENCHDATA / "celeba_ids")
    parser.add_argument("--alignment-json", type=Path, default=None)
    parser.add_argument("--landmark-steps", type=int, default=1200)
    parser.add_argument("--landmark-batch", type=int, default=32)
    parser.add_argument("--recognition-steps", type=int, default=400)
    parser.add_argument("--recognition-input", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--held-out", type=int, default=56, help="last N identities are held out")
    parser.add_argument("--skip-landmarks", action="store_true")
    parser.add_argument("--skip-alignment", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="facefleet-bench-landmarks-") as tmp:
        workdir = Path(tmp)
        mtcnn_dir = workdir / "mtcnn"
        mtcnn_dir.mkdir()
        export_mtcnn(mtcnn_dir)
        if not args.skip_landmarks:
            onnx_bytes, summary, crop_scale = train_landmark_model(
                workdir, args.helen, args.landmark_steps, args.landmark_batch
            )
            result = evaluate_helen(args.helen, onnx_bytes, crop_scale, mtcnn_dir)
            print(
                f"\nLandmarks on HELEN's held-out split: {result['faces']} faces "
                f"({result['missed_by_mtcnn']} missed by MTCNN, left out); our model: "
                f"{args.landmark_steps} steps x {args.landmark_batch} in {summary['train_seconds']:.0f} s"
            )
            print("| model | NME (outer-corner IOD) | failure rate (NME > 0.10) | ms/face (ORT, 1 thread) |")
            print("|---|---|---|---|")
            print(
                f"| MTCNN (O-Net points) | {result['mtcnn_nme']:.4f} | {result['mtcnn_failure']:.3f} | "
                f"{result['mtcnn_detect_ms_median']:.1f} (whole detection of the photo) |"
            )
            print(
                f"| facefleet landmarks (seed 001) | {result['ours_nme']:.4f} | "
                f"{result['ours_failure']:.3f} | "
                f"{result['ours_ms_median']:.2f} (p10 {result['ours_ms_p10']:.2f}) |"
            )
            ratio = result["ours_nme"] / result["mtcnn_nme"]
            print(
                f"NME ratio ours / MTCNN: {ratio:.2f} (target <= 1.00: {'met' if ratio <= 1 else 'MISSED'}); "
                f"latency target <= 5 ms: {'met' if result['ours_ms_median'] <= 5 else 'MISSED'}"
            )
        if not args.skip_alignment:
            points = celeba_points(args.celeba, args.alignment_json, mtcnn_dir)
            seeds = list(range(args.seeds))
            result = aligned_vs_unaligned(
                args.celeba, points, args.recognition_steps, seeds, args.recognition_input, args.held_out
            )
            print(
                f"\nAligned vs unaligned on celeba_ids: {result['train_images']} training images "
                f"({result['train_identities']} identities), {result['test_images']} held-out images "
                f"({args.held_out} identities); "
                f"tiny backbone, ArcFace, {args.recognition_steps} steps x 64, input {args.recognition_input}"
            )
            print("| input | verification AUC per seed | mean |")
            print("|---|---|---|")
            for name in ("unaligned", "aligned"):
                values = result["auc"][name]
                print(f"| {name} | {', '.join(f'{v:.4f}' for v in values)} | {statistics.mean(values):.4f} |")
            gain = statistics.mean(result["auc"]["aligned"]) - statistics.mean(result["auc"]["unaligned"])
            print(
                f"aligned - unaligned: {gain:+.4f} AUC "
                f"({'aligned wins' if gain > 0 else 'aligned does NOT win'})"
            )


if __name__ == "__main__":
    main()
