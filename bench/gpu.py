"""Benchmark: the GPU training path on one GPU (never in CI; needs CUDA).

IResNet-50 at 112 x 112 with the dataset-aware head (C classes, fp32 head math on the embeddings), SGD.
1. Synthetic data already on the device: images/s of fp32 (contiguous) — the in-process baseline — and of
   bf16 autocast + channels_last, with the ratio.
2. The real data pipeline (facefleet.workers.data: JPEG shards decoded on the CPU by DataLoader workers),
   bf16 + channels_last: images/s, the fraction of step time spent waiting for data, and the loader alone
   (decode throughput with no training), so a shortfall is stated as "the CPU decodes X img/s, the GPU
   trains Y img/s".
3. Smoke checks of what only a GPU run exercises: a one-rank NCCL group with the sharded head
   (facefleet.workers.partial_fc) under bf16 autocast for a few steps, and ONNX export + parity of the
   GPU-trained backbone (facefleet.workers.export).
Reference points: insightface ~590 img/s per V100 (Partial FC, 1.4M ids); goal >= 5,000 img/s per
H100-class GPU with synthetic data.
Run: .venv/bin/python bench/gpu.py [--batch 256] [--steps 60] [--classes 100000] [--data-workers 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facefleet.nn.backbones import get_backbone  # noqa: E402
from facefleet.nn.heads import DatasetAwareMarginHead  # noqa: E402

INPUT = 112


def _model(
    classes: int, channels_last: bool
) -> tuple[torch.nn.Module, torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = get_backbone("iresnet50", input_size=INPUT).cuda()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    head = DatasetAwareMarginHead(int(net.embedding_dim), [classes // 2, classes - classes // 2]).cuda()
    params = [*net.parameters(), *head.parameters()]
    return net, head, torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=5e-4)


def _train_step(
    net: torch.nn.Module,
    head: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    bf16: bool,
) -> torch.Tensor:
    images, labels, datasets = batch
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        embeddings = net(images)
    loss: torch.Tensor = head(embeddings.float(), labels, datasets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _synthetic_batch(batch: int, classes: int, channels_last: bool) -> tuple[torch.Tensor, ...]:
    images = torch.randn(batch, 3, INPUT, INPUT, device="cuda")
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    datasets = torch.arange(batch, device="cuda") % 2
    half = classes // 2
    labels = datasets * half + torch.randint(0, half, (batch,), device="cuda")
    return images, labels, datasets


def synthetic(args: argparse.Namespace, bf16: bool, channels_last: bool) -> dict[str, float]:
    net, head, optimizer = _model(args.classes, channels_last)
    batch = _synthetic_batch(args.batch, args.classes, channels_last)
    for _ in range(args.warmup):
        _train_step(net, head, optimizer, batch, bf16)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(args.steps):
        loss = _train_step(net, head, optimizer, batch, bf16)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    result = {
        "images_per_second": args.steps * args.batch / elapsed,
        "loss": float(loss),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }
    del net, head, optimizer, batch
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return result


def _prepare_data(root: Path, identities: int, images: int) -> dict[str, Any]:
    """Synthetic JPEG face datasets registered in a throwaway SQLite database and local store."""
    from facefleet.platform.datasets.service import register_dataset_version
    from facefleet.platform.db import migrate
    from facefleet.platform.db.session import session_scope
    from facefleet.platform.settings import get_settings
    from facefleet.platform.store import get_store
    from facefleet.workers.data import label_space_for_versions
    from facefleet.workers.synthetic import generate_synthetic_datasets

    os.environ["FACEFLEET_DATA_DIR"] = str(root)
    get_settings.cache_clear()
    migrate.upgrade(get_settings().effective_database_url)
    synth = generate_synthetic_datasets(
        root / "synth",
        num_datasets=2,
        identities_per_dataset=identities,
        images_per_identity=images,
        verification_identities=4,
        verification_pairs=10,
        image_size=INPUT,
    )
    with session_scope() as session:
        ids = [
            register_dataset_version(session, get_store(), name=d.name, source=d).id
            for d in synth.dataset_dirs
        ]
        entries = label_space_for_versions(session, ids)
    return {"entries": entries, "store_url": get_settings().effective_store_url, "cache": root / "cache"}


def real_pipeline(args: argparse.Namespace, root: Path) -> dict[str, float]:
    from facefleet.workers.data import make_train_loader

    data = _prepare_data(root, args.identities, args.images_per_identity)
    loader = make_train_loader(
        data["entries"],
        store_url=data["store_url"],
        s3_endpoint_url=None,
        batch_size=args.batch,
        input_size=INPUT,
        rank=0,
        world_size=1,
        num_workers=args.data_workers,
        seed=0,
        cache_dir=data["cache"],
        cache_bytes=1 << 30,
        epochs=None,
    )
    classes = sum(e.num_classes for e in data["entries"])
    net = get_backbone("iresnet50", input_size=INPUT).cuda().to(memory_format=torch.channels_last)
    head = DatasetAwareMarginHead(int(net.embedding_dim), [e.num_classes for e in data["entries"]]).cuda()
    optimizer = torch.optim.SGD([*net.parameters(), *head.parameters()], lr=0.02, momentum=0.9)
    batches = iter(loader)

    def next_batch() -> tuple[torch.Tensor, ...]:
        images, labels, datasets = next(batches)
        images = images.cuda(non_blocking=True).contiguous(memory_format=torch.channels_last)
        return images, labels.cuda(non_blocking=True), datasets.cuda(non_blocking=True)

    for _ in range(args.warmup):
        _train_step(net, head, optimizer, next_batch(), bf16=True)
    torch.cuda.synchronize()
    waiting, started = 0.0, time.perf_counter()
    for _ in range(args.steps):
        wait_from = time.perf_counter()
        batch = next_batch()
        waiting += time.perf_counter() - wait_from
        _train_step(net, head, optimizer, batch, bf16=True)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    # the loader alone: how fast the CPU decodes when nothing else waits
    decode_started = time.perf_counter()
    for _ in range(args.steps):
        next(batches)
    decode_elapsed = time.perf_counter() - decode_started
    return {
        "images_per_second": args.steps * args.batch / elapsed,
        "data_wait_fraction": waiting / elapsed,
        "decode_images_per_second": args.steps * args.batch / decode_elapsed,
        "classes": float(classes),
    }


def smoke_sharded_nccl_and_onnx(args: argparse.Namespace, root: Path) -> dict[str, float]:
    """A one-rank NCCL group, the sharded head under bf16 autocast, then ONNX export of the backbone."""
    import torch.distributed as dist

    from facefleet.workers.export import check_onnx_parity, write_onnx
    from facefleet.workers.partial_fc import DistributedMarginHead

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        net = get_backbone("iresnet50", input_size=INPUT).cuda().to(memory_format=torch.channels_last)
        head = DistributedMarginHead(
            512, [args.classes // 2, args.classes - args.classes // 2], crossing_p=1e-4, sample_rate=0.1
        ).cuda()
        optimizer = torch.optim.SGD([*net.parameters(), *head.parameters()], lr=0.02, momentum=0.9)
        losses = []
        for step in range(5):
            images, labels, datasets = _synthetic_batch(args.batch, args.classes, True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                embeddings = net(images)
            loss = head(embeddings.float(), labels, datasets, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
        assert all(torch.isfinite(torch.tensor(losses))), losses
        backbone = net.eval().float().cpu().to(memory_format=torch.contiguous_format)
        path = root / "backbone.onnx"
        write_onnx(backbone, INPUT, path)
        parity = check_onnx_parity(backbone, path, INPUT)
        with torch.no_grad():
            probe = F.normalize(backbone(torch.randn(2, 3, INPUT, INPUT)), dim=1)
        return {
            "sharded_loss_first": losses[0],
            "sharded_loss_last": losses[-1],
            "onnx_max_abs_diff": parity,
            "probe_norm": float(probe.norm(dim=1).mean()),
        }
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--classes", type=int, default=100_000)
    parser.add_argument("--data-workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--identities", type=int, default=200, help="per synthetic dataset (real pipeline)")
    parser.add_argument("--images-per-identity", type=int, default=20)
    parser.add_argument("--skip", nargs="*", default=[], choices=["synthetic", "pipeline", "smoke"])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA GPU; none is visible (this benchmark never runs in CI)")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name()
    print(
        f"{name}, torch {torch.__version__}, IResNet-50 at {INPUT}x{INPUT}, batch {args.batch}, "
        f"C={args.classes:,}, {args.steps} timed steps after {args.warmup}",
        flush=True,
    )
    if "synthetic" not in args.skip:
        base = synthetic(args, bf16=False, channels_last=False)
        fast = synthetic(args, bf16=True, channels_last=True)
        print(f"{'synthetic data on the device':<40}{'img/s':>10}{'ratio':>8}{'peak GiB':>10}")
        print(
            f"{'fp32 (tf32 matmul), contiguous':<40}{base['images_per_second']:>10.0f}{1.0:>8.2f}"
            f"{base['peak_gib']:>10.1f}"
        )
        print(
            f"{'bf16 autocast + channels_last':<40}{fast['images_per_second']:>10.0f}"
            f"{fast['images_per_second'] / base['images_per_second']:>8.2f}{fast['peak_gib']:>10.1f}"
            "  goal >= 5,000 img/s (H100-class)",
            flush=True,
        )
    with tempfile.TemporaryDirectory(prefix="facefleet-gpu-") as tmp:
        if "pipeline" not in args.skip:
            real = real_pipeline(args, Path(tmp))
            print(
                f"real pipeline ({args.data_workers} decode workers, JPEG on the CPU), bf16 + channels_last: "
                f"{real['images_per_second']:.0f} img/s, "
                f"data-wait fraction {real['data_wait_fraction']:.3f}; "
                f"the loader alone decodes {real['decode_images_per_second']:.0f} img/s",
                flush=True,
            )
        if "smoke" not in args.skip:
            smoke = smoke_sharded_nccl_and_onnx(args, Path(tmp))
            print(
                "smoke: NCCL one-rank sharded head r=0.1 under bf16, "
                f"loss {smoke['sharded_loss_first']:.3f} -> "
                f"{smoke['sharded_loss_last']:.3f}; ONNX export of the GPU-trained backbone, max |diff| "
                f"{smoke['onnx_max_abs_diff']:.2e}",
                flush=True,
            )


if __name__ == "__main__":
    main()
