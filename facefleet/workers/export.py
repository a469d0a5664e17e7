"""Export a trained backbone: model.safetensors, model.onnx (checked against torch), model_card.json."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from sqlalchemy.orm import Session
from torch import nn

from facefleet.nn.backbones import Backbone
from facefleet.nn.probe import make_probe_input
from facefleet.platform.db.models import ModelVersion
from facefleet.platform.models.card import (
    AlignerSpec,
    ArchitectureSpec,
    DatasetEntry,
    DistillationSpec,
    InputSpec,
    ModelCard,
    ProbeSpec,
)
from facefleet.platform.models.service import artifact_info, register_model_version
from facefleet.platform.runs.schemas import TrainingConfig
from facefleet.platform.store import ObjectStore

ONNX_TOLERANCE = 1e-4
PROBE_SEED, PROBE_COUNT = 1234, 2


class OnnxMismatchError(RuntimeError):
    """The ONNX graph does not compute what the PyTorch module computes."""


def write_safetensors(backbone: nn.Module, path: Path) -> None:
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in backbone.state_dict().items()}
    save_file(tensors, str(path))


def write_onnx(backbone: nn.Module, input_size: int, path: Path) -> None:
    """One self-contained file (the TorchScript exporter), dynamic batch size."""
    example = torch.zeros(2, 3, input_size, input_size)
    torch.onnx.export(
        backbone,
        (example,),
        str(path),
        input_names=["images"],
        output_names=["embeddings"],
        dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}},
        opset_version=17,
        do_constant_folding=True,
        # Eval semantics whatever mode the module is in: BatchNorm exported with running statistics,
        # so onnxruntime folds every BN that follows a Conv into that Conv.
        training=torch.onnx.TrainingMode.EVAL,
        dynamo=False,
    )


def check_onnx_parity(backbone: nn.Module, path: Path, input_size: int, seed: int = 0) -> float:
    """Largest absolute difference between onnxruntime and torch on random inputs; raises above tolerance."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for batch in (1, 3):
        images = torch.rand(batch, 3, input_size, input_size, generator=generator) * 2 - 1
        with torch.no_grad():
            expected = backbone(images).numpy()
        actual = session.run(["embeddings"], {"images": images.numpy()})[0]
        worst = max(worst, float(np.abs(actual - expected).max()))
    if worst > ONNX_TOLERANCE:
        raise OnnxMismatchError(f"ONNX output differs from torch by {worst:.2e} (> {ONNX_TOLERANCE:g})")
    return worst


def build_card(
    backbone: Backbone,
    config: TrainingConfig,
    artifacts_dir: Path,
    *,
    datasets: list[DatasetEntry],
    metrics: dict[str, Any],
    threshold: float,
    aligner: AlignerSpec | None = None,
    distillation: DistillationSpec | None = None,
) -> ModelCard:
    probe = make_probe_input(PROBE_SEED, PROBE_COUNT, config.input_size)
    with torch.no_grad():
        embeddings = backbone(probe).tolist()
    return ModelCard(
        name=config.model_name,
        version=0,
        architecture=ArchitectureSpec(
            backbone=config.backbone,
            kwargs={"embedding_dim": backbone.embedding_dim, "input_size": config.input_size},
        ),
        input=InputSpec(size=config.input_size),
        embedding_dim=backbone.embedding_dim,
        datasets=datasets,
        config=config.model_dump(mode="json", by_alias=True),
        metrics=metrics,
        threshold=threshold,
        artifacts={
            name: artifact_info(artifacts_dir / name)
            for name in ("model.safetensors", "model.onnx", *(aligner.files.values() if aligner else ()))
        },
        probe=ProbeSpec(seed=PROBE_SEED, count=PROBE_COUNT, embeddings=embeddings),
        aligner=aligner,
        distillation=distillation,
    )


def export_and_register(
    session: Session,
    store: ObjectStore,
    *,
    run_id: int,
    backbone: Backbone,
    config: TrainingConfig,
    datasets: list[DatasetEntry],
    metrics: dict[str, Any],
    threshold: float,
    dataset_version_ids: list[int] | None = None,
    distillation: DistillationSpec | None = None,
) -> tuple[ModelVersion, float]:
    """Write the artifacts, check ONNX against torch, register version n+1 with alias ``candidate``.

    When the training versions were aligned (``--align``), the aligner's ONNX files join the bundle and the
    card names the aligner, so terminals align frames the same way before embedding.
    """
    from facefleet.platform.models.aligner_bundle import training_aligner, write_aligner_files

    backbone = backbone.cpu().eval()
    with tempfile.TemporaryDirectory(prefix="facefleet-export-") as tmp:
        folder = Path(tmp)
        write_safetensors(backbone, folder / "model.safetensors")
        write_onnx(backbone, config.input_size, folder / "model.onnx")
        parity = check_onnx_parity(backbone, folder / "model.onnx", config.input_size)
        used = training_aligner(session, dataset_version_ids or [])
        aligner = write_aligner_files(session, store, used, folder) if used else None
        card = build_card(
            backbone,
            config,
            folder,
            datasets=datasets,
            metrics={**metrics, "onnx_max_abs_diff": parity},
            threshold=threshold,
            aligner=aligner,
            distillation=distillation,
        )
        model = register_model_version(
            session, store, name=config.model_name, run_id=run_id, artifacts_dir=folder, card=card
        )
    return model, parity
