"""Evaluation of a run: verification metrics on its verification sets and on pairs from its training datasets,
for cosine scores and (when trained) the BioMetricNet -1 and -M decisions; ROC and loss-curve plots."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session
from torch import nn

from facefleet.nn.biometricnet import ModelNet, four_way_average, match_score
from facefleet.nn.operating_point import OperatingPoint, choose_operating_point
from facefleet.nn.verification import VerificationMetrics, cosine_scores, verification_metrics
from facefleet.platform.datasets import layout
from facefleet.platform.datasets.shards import read_manifest, read_pair_folds
from facefleet.platform.runs.datasets import run_datasets
from facefleet.platform.runs.schemas import TrainingConfig
from facefleet.platform.store import ObjectStore, store_from_url

CHUNK = 256


@dataclass
class EvalSet:
    """Pairs of images: ``name`` is the verification set, or ``train-pairs:<dataset>`` for pairs drawn from a
    training dataset (those images were seen in training: easier than a held-out set)."""

    name: str
    left: torch.Tensor
    right: torch.Tensor
    is_same: torch.Tensor
    fold_ids: list[int] | None = None  # the folds the set's pairs file declares; None: stratified folds


class EvalResults(BaseModel):
    """set name -> mode (``cosine``, ``biometricnet-1``, ``biometricnet-M``) -> metrics."""

    sets: dict[str, dict[str, VerificationMetrics]] = Field(default_factory=dict)
    operating_points: dict[str, OperatingPoint] = Field(
        default_factory=dict,
        description="per set: the card's operating point, on terminal (single-view) scores",
    )

    def flat_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for set_name, modes in self.sets.items():
            for mode, metrics in modes.items():
                for key in ("accuracy", "auc", "eer", "tar_at_far_1e3"):
                    out[f"eval/{set_name}/{mode}/{key}"] = float(getattr(metrics, key))
        return out

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        return {
            name: {mode: m.model_dump(exclude={"roc_fpr", "roc_tpr"}) for mode, m in modes.items()}
            for name, modes in self.sets.items()
        }

    def operating_point(self) -> OperatingPoint | None:
        """The card's operating point: the first verification set's (else the first set's)."""
        ordered = sorted(self.operating_points, key=lambda name: name.startswith("train-pairs:"))
        return self.operating_points[ordered[0]] if ordered else None

    def cosine_threshold(self, operating_far: float | None = None) -> float:
        """The card's threshold from the first verification set (else the first set); 0.5 when none.

        With ``operating_far`` it is the operating point's (``facefleet.nn.operating_point``: at most that
        share of impostor pairs accepted, on the single-view scores a terminal computes), else the
        best-accuracy threshold of the flip-fused cosine.
        """
        point = self.operating_point()
        if operating_far is not None and point is not None:
            return float(point.threshold)
        ordered = sorted(self.sets, key=lambda name: name.startswith("train-pairs:"))
        for name in ordered:
            if "cosine" in self.sets[name]:
                metrics = self.sets[name]["cosine"]
                if operating_far is not None:
                    return float(metrics.threshold_at_operating_far)
                return float(metrics.threshold)
        return 0.5


def operating_point_metrics(point: OperatingPoint | None) -> dict[str, float]:
    """The operating point as run metrics (``operating_point/reliable`` is 0 when the set had fewer than
    1/operating_far impostor pairs and the fallback rule chose the threshold)."""
    if point is None:
        return {}
    return {
        "operating_point/threshold": point.threshold,
        "operating_point/tar": point.tar,
        "operating_point/far": point.far,
        "operating_point/far_upper_95": point.far_upper_95,
        "operating_point/impostor_pairs": float(point.impostor_pairs),
        "operating_point/reliable": float(point.reliable),
    }


def load_eval_sets(
    session: Session, run_id: int, config: TrainingConfig, *, store_url: str, s3_endpoint_url: str | None
) -> list[EvalSet]:
    from facefleet.workers.data import load_verification_pairs, load_verification_set, pairs_within_dataset

    store = store_from_url(store_url, endpoint_url=s3_endpoint_url)
    rows = [
        (row.role, version.version, version.manifest_key, dataset.name)
        for row, version, dataset in run_datasets(session, [run_id])
    ]
    sets: list[EvalSet] = []
    for role, version, manifest_key, name in rows:
        if manifest_key is None:
            raise ValueError(f"dataset {name} v{version} has no manifest; it is not ready")
        if role == "verification":
            pairs_key = layout.pairs_key(name, version)
            left, right, same = load_verification_set(store, manifest_key, pairs_key, config.input_size)
            sets.append(EvalSet(name, left, right, same, read_pair_folds(store, pairs_key)))
        elif role == "train" and config.eval_pairs_per_dataset:
            pairs = pairs_within_dataset(
                read_manifest(store, manifest_key), config.eval_pairs_per_dataset, config.seed
            )
            left, right, same = load_verification_pairs(store, manifest_key, pairs, config.input_size)
            sets.append(EvalSet(f"train-pairs:{name}", left, right, same))
    return sets


def _chunked(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    return torch.cat([fn(images[i : i + CHUNK]) for i in range(0, images.shape[0], CHUNK)])


@torch.no_grad()
def evaluate_model(
    backbone: nn.Module, model_net: ModelNet | None, sets: list[EvalSet], config: TrainingConfig
) -> EvalResults:
    """Metrics of every set; the modules are put in eval mode (callers restore train mode).

    The backbone runs once per image and once per flipped image; every mode reuses those features.
    """
    backbone.eval()
    device = next(backbone.parameters()).device
    results = EvalResults()

    def features(images: torch.Tensor) -> torch.Tensor:
        return F.normalize(backbone(images.to(device)).float(), dim=1)

    def flipped(images: torch.Tensor) -> torch.Tensor:
        return features(torch.flip(images, dims=[3]))

    for eval_set in sets:
        left, left_flip = _chunked(features, eval_set.left), _chunked(flipped, eval_set.left)
        right, right_flip = _chunked(features, eval_set.right), _chunked(flipped, eval_set.right)
        # flip fusion as `fuse_flip` does it
        fused_left, fused_right = F.normalize(left + left_flip, dim=1), F.normalize(right + right_flip, dim=1)
        results.operating_points[eval_set.name] = choose_operating_point(
            cosine_scores(left, right).cpu(),  # single view: what a terminal scores
            eval_set.is_same,
            operating_far=config.operating_far or 0.01,
            set_name=eval_set.name,
        )
        modes = {
            "cosine": verification_metrics(
                cosine_scores(fused_left, fused_right).cpu(),
                eval_set.is_same,
                operating_far=config.operating_far or 0.01,
                fold_ids=eval_set.fold_ids,
            )
        }
        if model_net is not None:
            model_net.eval()
            mu = config.biometric.mu_match
            chunks = [slice(i, i + CHUNK) for i in range(0, left.shape[0], CHUNK)]
            single = torch.cat([model_net(left[c], right[c]) for c in chunks])
            modes["biometricnet-1"] = verification_metrics(
                match_score(single, mu).cpu(), eval_set.is_same, fold_ids=eval_set.fold_ids
            )
            multi = torch.cat(
                [four_way_average(model_net, left[c], left_flip[c], right[c], right_flip[c]) for c in chunks]
            )
            modes["biometricnet-M"] = verification_metrics(
                match_score(multi, mu).cpu(), eval_set.is_same, fold_ids=eval_set.fold_ids
            )
        results.sets[eval_set.name] = modes
    return results


def _png(figure: object) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)  # type: ignore[attr-defined]
    return buffer.getvalue()


ROC_POINTS = 200


def roc_document(results: EvalResults, max_points: int = ROC_POINTS) -> dict[str, Any]:
    """The ROC curves as JSON (at most ``max_points`` per curve), for the web console to draw."""
    sets: dict[str, dict[str, dict[str, Any]]] = {}
    for set_name, modes in results.sets.items():
        for mode, metrics in modes.items():
            fpr, tpr = list(metrics.roc_fpr), list(metrics.roc_tpr)
            if len(fpr) > max_points:
                picks = sorted({round(i * (len(fpr) - 1) / (max_points - 1)) for i in range(max_points)})
                fpr, tpr = [fpr[i] for i in picks], [tpr[i] for i in picks]
            sets.setdefault(set_name, {})[mode] = {
                "auc": float(metrics.auc),
                "fpr": [round(float(x), 6) for x in fpr],
                "tpr": [round(float(y), 6) for y in tpr],
            }
    return {"sets": sets}


def save_plots(
    store: ObjectStore, run_id: int, results: EvalResults, series: dict[str, list[tuple[int, float]]]
) -> list[str]:
    """ROC curves and loss curves as PNGs under runs/<id>/plots/; returns their keys."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    keys = []
    figure, axis = plt.subplots(figsize=(6, 5))
    for set_name, modes in results.sets.items():
        for mode, metrics in modes.items():
            axis.plot(metrics.roc_fpr, metrics.roc_tpr, label=f"{set_name} {mode} (AUC {metrics.auc:.3f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":")
    axis.set(xlabel="false accept rate", ylabel="true accept rate", title=f"run {run_id}: ROC")
    axis.legend(fontsize=7)
    keys.append(f"runs/{run_id}/plots/roc.png")
    store.put_bytes(keys[-1], _png(figure), content_type="image/png")
    plt.close(figure)
    keys.append(f"runs/{run_id}/plots/roc.json")
    store.put_bytes(keys[-1], json.dumps(roc_document(results)).encode(), content_type="application/json")
    figure, axis = plt.subplots(figsize=(7, 4))
    for name in ("loss", "identity_loss", "domain_loss", "kl_loss"):
        if series.get(name):
            steps, values = zip(*series[name], strict=True)
            axis.plot(steps, values, label=name)
    axis.set(xlabel="step", ylabel="loss", title=f"run {run_id}: training losses")
    axis.set_yscale("symlog")
    if series.get("domain_accuracy"):
        twin = axis.twinx()
        steps, values = zip(*series["domain_accuracy"], strict=True)
        twin.plot(steps, values, color="black", linestyle="--", label="dataset-classifier accuracy")
        twin.set(ylabel="dataset-classifier accuracy", ylim=(0, 1))
        twin.legend(loc="upper center", fontsize=7)
    axis.legend(fontsize=7)
    keys.append(f"runs/{run_id}/plots/loss.png")
    store.put_bytes(keys[-1], _png(figure), content_type="image/png")
    plt.close(figure)
    return keys
