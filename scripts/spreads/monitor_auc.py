"""Measures how close tests/platform/test_scheduler_monitor.py's AUC comparison is to a float-rounding flip.

    ATEN_CPU_CAPABILITY=default PYTHONPATH=. python scripts/spreads/monitor_auc.py

For tiny_backbone(seed): the ONNX-evaluated AUC minus the torch AUC, the largest |ONNX - torch| pair score
difference, and the smallest |same-pair score - different-pair score| (an AUC can change only when
rounding moves a score across that gap).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from facefleet.nn.verification import cosine_scores, fuse_flip, verification_metrics


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        os.environ["FACEFLEET_DATA_DIR"] = str(tmp / "data")
        from sqlalchemy.orm import Session

        from facefleet.platform.datasets import layout
        from facefleet.platform.datasets.service import get_version
        from facefleet.platform.db import migrate
        from facefleet.platform.db.session import make_engine
        from facefleet.platform.store.local import LocalStore
        from facefleet.workers.data import load_verification_set
        from facefleet.workers.monitor import _embed, _onnx_embedder
        from tests.platform.scheduler_support import register
        from tests.terminal.model_factory import register_test_model, tiny_backbone

        url = f"sqlite:///{tmp / 'm.db'}"
        migrate.upgrade(url)
        engine, store = make_engine(url), LocalStore(tmp / "store")
        register(engine, store, tmp, "lfw", kind="verification")
        for seed in range(10):
            with Session(engine) as session:
                model = register_test_model(session, store, tmp / f"model{seed}", seed=seed, name=f"m{seed}")
                session.commit()
                version = get_version(session, "lfw")
                onnx_session, size = _onnx_embedder(store, model)
            left, right, same = load_verification_set(
                store, str(version.manifest_key), layout.pairs_key("lfw", version.version), size
            )
            net = tiny_backbone(seed)
            with torch.no_grad():

                def embed(x: torch.Tensor, net: torch.nn.Module = net) -> torch.Tensor:
                    return F.normalize(net(x), dim=1)

                torch_scores = cosine_scores(fuse_flip(embed, left), fuse_flip(embed, right)).numpy()
            onnx_scores = np.asarray(
                cosine_scores(
                    fuse_flip(lambda x, s=onnx_session: _embed(s, x), left),
                    fuse_flip(lambda x, s=onnx_session: _embed(s, x), right),
                )
            )
            same_arr = np.asarray(same, bool)
            gaps = np.abs(torch_scores[same_arr][:, None] - torch_scores[~same_arr][None, :])
            row = {
                "capability": torch.backends.cpu.get_cpu_capability(),
                "seed": seed,
                "auc_diff": verification_metrics(onnx_scores, same_arr).auc
                - verification_metrics(torch_scores, same_arr).auc,
                "max_score_diff": float(np.abs(onnx_scores - torch_scores).max()),
                "min_cross_gap": float(gaps.min()),
                "score_range": float(torch_scores.max() - torch_scores.min()),
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
