"""Re-evaluate a registered model on the latest ready version of verification sets (the scheduler's
metric-drop check): the model's own ONNX graph, flip-fused cosine scores, 10-fold accuracy and friends, on
the folds the set's pairs file declares (LFW header) when it declares them, as the run's evaluation does."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from sqlalchemy.orm import Session

from facefleet.nn.verification import cosine_scores, fuse_flip, verification_metrics
from facefleet.platform.datasets import layout
from facefleet.platform.datasets.service import get_version
from facefleet.platform.datasets.shards import read_pair_folds
from facefleet.platform.db.models import ModelVersion
from facefleet.platform.errors import NotFoundError
from facefleet.platform.store import ObjectStore, get_store

CHUNK = 64


def _onnx_embedder(store: ObjectStore, model: ModelVersion) -> tuple[ort.InferenceSession, int]:
    artifacts = model.artifacts or {}
    if "model.onnx" not in artifacts or "model_card.json" not in artifacts:
        raise NotFoundError(f"model {model.name} v{model.version} has no ONNX graph or card to evaluate")
    card = json.loads(store.get_bytes(str(artifacts["model_card.json"]["key"])))
    graph = store.get_bytes(str(artifacts["model.onnx"]["key"]))
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    return session, int(card["input"]["size"])


def _embed(session: ort.InferenceSession, images: torch.Tensor) -> torch.Tensor:
    name = session.get_inputs()[0].name
    outputs = [
        session.run(None, {name: images[i : i + CHUNK].numpy().astype(np.float32)})[0]
        for i in range(0, images.shape[0], CHUNK)
    ]
    # Normalised per view before flip fusion, as the training evaluation does (workers/evaluate.py).
    return F.normalize(torch.from_numpy(np.concatenate(outputs)).float(), dim=1)


def evaluate_model_version(
    session: Session, model: ModelVersion, sets: Sequence[str], metric: str, store: ObjectStore | None = None
) -> dict[str, float]:
    """``metric`` (e.g. ``accuracy``) of ``model`` on each named verification set's latest ready version."""
    from facefleet.workers.data import load_verification_set

    store = store or get_store()
    onnx_session, input_size = _onnx_embedder(store, model)
    scores: dict[str, float] = {}
    for name in sets:
        version = get_version(session, name)  # latest ready version
        pairs_key = layout.pairs_key(name, version.version)
        left, right, same = load_verification_set(store, str(version.manifest_key), pairs_key, input_size)
        fused_left = fuse_flip(lambda x: _embed(onnx_session, x), left)
        fused_right = fuse_flip(lambda x: _embed(onnx_session, x), right)
        # The declared folds, or None (stratified folds), exactly as workers/evaluate.py load_eval_sets.
        fold_ids = read_pair_folds(store, pairs_key)
        result = verification_metrics(cosine_scores(fused_left, fused_right), same, fold_ids=fold_ids)
        scores[name] = float(getattr(result, metric))
    return scores
