"""The evaluation scores a verification set on the folds its pairs file declared."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from facefleet.nn.backbones import get_backbone
from facefleet.nn.verification import verification_metrics
from facefleet.platform.runs.schemas import TrainingConfig
from facefleet.workers.evaluate import EvalSet, evaluate_model


def test_evaluate_model_uses_the_declared_folds() -> None:
    torch.manual_seed(0)
    backbone = get_backbone("tiny", embedding_dim=16, input_size=32)
    config = TrainingConfig.model_validate({"backbone": "tiny", "embedding_dim": 16, "input_size": 32})
    left, right = torch.randn(40, 3, 32, 32), torch.randn(40, 3, 32, 32)
    same = torch.tensor([i % 4 < 2 for i in range(40)])
    folds = [i // 8 for i in range(40)]
    results = evaluate_model(backbone, None, [EvalSet("v", left, right, same, folds)], config)
    with torch.no_grad():

        def fused(x: torch.Tensor) -> torch.Tensor:
            return F.normalize(
                F.normalize(backbone(x), dim=1) + F.normalize(backbone(torch.flip(x, dims=[3])), dim=1), dim=1
            )

        scores = F.cosine_similarity(fused(left), fused(right), dim=1)
    expected = verification_metrics(scores, same, fold_ids=folds, operating_far=config.operating_far or 0.01)
    assert results.sets["v"]["cosine"].accuracy == expected.accuracy
    assert results.sets["v"]["cosine"].accuracy_std == expected.accuracy_std
