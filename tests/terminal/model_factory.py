"""Real model versions for terminal tests: tiny backbone -> safetensors + ONNX + signed card (registry)."""

from __future__ import annotations

from pathlib import Path

import torch
from sqlalchemy.orm import Session

# write_artifacts is shared with bench/adaptation.py
from bench._support import TINY_WIDTH, write_artifacts
from facefleet.nn.backbones import Backbone, get_backbone
from facefleet.platform.db.models import ModelVersion, Run
from facefleet.platform.models.service import register_model_version
from facefleet.platform.runs.schemas import TrainingConfig
from facefleet.platform.store import ObjectStore
from facefleet.workers.export import export_and_register

INPUT_SIZE = 32
EMBEDDING_DIM = 32
WIDTH = TINY_WIDTH


def tiny_backbone(seed: int) -> Backbone:
    torch.manual_seed(seed)
    return get_backbone("tiny", embedding_dim=EMBEDDING_DIM, input_size=INPUT_SIZE, width=WIDTH).eval()


def register_test_model(
    session: Session,
    store: ObjectStore,
    folder: Path,
    *,
    seed: int = 0,
    threshold: float = 0.5,
    corrupt_probe: bool = False,
    net: Backbone | None = None,
    name: str = "terminal",
) -> ModelVersion:
    """A registered, signed model version, made by the real export worker (end-to-end contract).

    ``corrupt_probe`` builds the card here instead, with probe embeddings that the model does not produce.
    """
    net = net or tiny_backbone(seed)
    if corrupt_probe:
        card = write_artifacts(folder, net, threshold=threshold, corrupt_probe=True)
        return register_model_version(
            session, store, name=name, run_id=None, artifacts_dir=folder, card=card, alias=None
        )
    run = Run(name=f"test-{name}", status="succeeded")
    session.add(run)
    session.flush()
    config = TrainingConfig(
        model_name=name, backbone="tiny", embedding_dim=net.embedding_dim, input_size=net.input_size
    )
    version, _parity = export_and_register(
        session,
        store,
        run_id=run.id,
        backbone=net,
        config=config,
        datasets=[],
        metrics={},
        threshold=threshold,
    )
    return version


def trained_backbone(seed: int = 0, *, identities: int = 32, steps: int = 120) -> Backbone:
    """A tiny backbone trained briefly (normalised softmax) on synthetic identities unlike the test users."""
    from tests.terminal.synthetic_faces import face_batch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # far faster than 2 threads on a shared 2-core machine
    net = tiny_backbone(seed).train()
    head = torch.nn.Parameter(torch.randn(identities, net.embedding_dim) * 0.1)
    optimiser = torch.optim.Adam([*net.parameters(), head], lr=5e-3)
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        labels = torch.randint(0, identities, (64,), generator=generator)
        images = face_batch(
            [200 + int(label) for label in labels], capture_offset=step * 64, size=net.input_size
        )
        logits = torch.nn.functional.normalize(net(images)) @ torch.nn.functional.normalize(head).T
        loss = torch.nn.functional.cross_entropy(
            16.0 * (logits - 0.2 * torch.nn.functional.one_hot(labels, identities)), labels
        )
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    torch.set_num_threads(threads)
    return net.eval()
