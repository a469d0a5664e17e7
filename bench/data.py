"""Benchmark: pipeline throughput (shard read, decode, flip, resize) vs what a training step consumes.

Data: the synthetic generator (3 datasets x 40 identities x 10 images, 112 px JPEG) packed into shards in a
local store and in S3 served by moto over loopback. Pipeline: `make_train_loader`, two DataLoader
processes, batch 64, images/second over two epochs (S3 shards come through the bounded local cache).
Consumption: images/second of one SGD training step (forward + backward + step, linear classifier) of the
`tiny` and `mobilefacenet` backbones, batch 64, in this process. Target: pipeline >= 2x consumption.
Run: .venv/bin/python bench/data.py
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import torch

from facefleet.platform.datasets.shards import ImageRecord, pack_shards, write_manifest
from facefleet.platform.store import ObjectStore
from facefleet.platform.store.local import LocalStore
from facefleet.platform.store.s3 import S3Store
from facefleet.workers.data import LabelSpaceEntry, build_label_space, make_train_loader
from facefleet.workers.synthetic import generate_synthetic_datasets

BATCH, INPUT_SIZE, LOADER_WORKERS, EPOCHS = 64, 112, 2, 2
TRAIN_SECONDS = 8.0


def pack_folder(store: ObjectStore, folder: Path, dataset_id: int) -> LabelSpaceEntry:
    identities = sorted(p for p in folder.iterdir() if p.is_dir())
    records = [
        ImageRecord.from_bytes(
            identity=ident.name, label=label, member=f"{ident.name}/{img.name}", data=img.read_bytes()
        )
        for label, ident in enumerate(identities)
        for img in sorted(ident.glob("*.jpg"))
    ]
    rows = pack_shards(store, folder.name, 1, records, max_images=200)
    key = write_manifest(store, folder.name, 1, rows)
    return LabelSpaceEntry(
        dataset_version_id=dataset_id,
        dataset_name=folder.name,
        version=1,
        manifest_key=key,
        num_classes=len(identities),
        image_count=len(records),
    )


def pipeline_rate(store: ObjectStore, entries: list[LabelSpaceEntry], cache_dir: Path) -> float:
    loader = make_train_loader(
        entries,
        store_url=store.url,
        s3_endpoint_url=getattr(store, "endpoint_url", None),
        batch_size=BATCH,
        input_size=INPUT_SIZE,
        rank=0,
        world_size=1,
        num_workers=LOADER_WORKERS,
        seed=0,
        cache_dir=cache_dir,
        cache_bytes=256 << 20,
        epochs=EPOCHS,
    )
    start, images = time.perf_counter(), 0
    for batch, _labels, _datasets in loader:
        images += len(batch)
    return images / (time.perf_counter() - start)


def consumption_rate(backbone_name: str, num_classes: int) -> float:
    from facefleet.nn.backbones import get_backbone

    torch.manual_seed(0)
    backbone = get_backbone(backbone_name, input_size=INPUT_SIZE)
    x = torch.randn(BATCH, 3, INPUT_SIZE, INPUT_SIZE)
    labels = torch.randint(0, num_classes, (BATCH,))
    classifier = torch.nn.Linear(backbone(x[:2]).shape[1], num_classes)
    params = list(backbone.parameters()) + list(classifier.parameters())
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(classifier(backbone(x)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up (allocator, kernels)
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < TRAIN_SECONDS or steps < 2:
        step()
        steps += 1
    return steps * BATCH / (time.perf_counter() - start)


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process, endpoint
        except OSError:
            time.sleep(0.1)
    process.terminate()
    raise RuntimeError("moto server did not start")


def main() -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(name, value)
    moto, endpoint = start_moto()
    try:
        with tempfile.TemporaryDirectory(prefix="facefleet-bench-data-") as tmp:
            root = Path(tmp)
            t0 = time.perf_counter()
            synth = generate_synthetic_datasets(root / "synth", seed=0)
            print(f"generated {synth.image_count} synthetic images in {time.perf_counter() - t0:.1f} s")
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
            stores: dict[str, ObjectStore] = {
                "local store": LocalStore(root / "store"),
                "S3 (moto, loopback)": S3Store("bench", "facefleet", endpoint_url=endpoint),
            }
            rates: dict[str, float] = {}
            for label, store in stores.items():
                entries = build_label_space(
                    [pack_folder(store, d, i) for i, d in enumerate(synth.dataset_dirs)]
                )
                rates[label] = pipeline_rate(store, entries, root / f"cache-{len(rates)}")
            classes = sum(e.num_classes for e in entries)
            consumption = {name: consumption_rate(name, classes) for name in ("tiny", "mobilefacenet")}
    finally:
        moto.terminate()
        moto.wait(timeout=10)
    print(
        f"\nCPU threads: torch {torch.get_num_threads()}, cores {os.cpu_count()}; batch {BATCH}, "
        f"{INPUT_SIZE}x{INPUT_SIZE}, {LOADER_WORKERS} loader processes\n"
    )
    print(f"{'pipeline source':<22}{'pipeline img/s':>15}{'backbone':>15}{'train img/s':>13}{'ratio':>8}")
    for label, rate in rates.items():
        for name, consumed in consumption.items():
            ratio = rate / consumed
            flag = "" if ratio >= 2 else "  < 2x"
            print(f"{label:<22}{rate:>15.0f}{name:>15}{consumed:>13.0f}{ratio:>7.1f}x{flag}")


if __name__ == "__main__":
    main()
