"""Seed a console's database cheaply through the services: real datasets (tiny images), runs with metrics
and a real ROC document, registered model versions, devices with a canary deployment, a policy, and an
auto-promote that declined. Nothing is trained."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from facefleet.nn.verification import verification_metrics
from facefleet.platform import audit
from facefleet.platform.auth import create_api_key
from facefleet.platform.datasets.service import register_dataset_version
from facefleet.platform.db.models import ModelVersion, RetrainPolicy
from facefleet.platform.deployments import service as deployments
from facefleet.platform.devices import service as devices
from facefleet.platform.policies import outcomes
from facefleet.platform.policies import service as policies
from facefleet.platform.policies.schemas import PolicyCreate
from facefleet.platform.runs import lifecycle
from facefleet.platform.runs import service as runs
from facefleet.platform.settings import Settings
from facefleet.platform.signing import sign_bytes
from facefleet.platform.store import ObjectStore
from facefleet.workers.evaluate import EvalResults, roc_document
from facefleet.workers.synthetic import generate_synthetic_datasets

TINY_CONFIG = {"backbone": "tiny", "input_size": 48, "steps": 200, "batch_size": 8}
ONE_DATASET = {**TINY_CONFIG, "reversal": {"enabled": False}}


@dataclass
class Seeded:
    admin_key: str
    viewer_key: str
    run_ids: list[int]
    running_run_id: int
    model_name: str
    deployment_id: int
    policy_id: int


def _roc(seed: int, separation: float) -> EvalResults:
    """Real verification metrics of synthetic scores: genuine pairs score higher by ``separation``."""
    generator = torch.Generator().manual_seed(seed)
    same = torch.arange(200) % 2 == 0
    scores = torch.randn(200, generator=generator) * 0.3 + same.float() * separation
    metrics = verification_metrics(scores, same)
    return EvalResults(sets={"faces-verify": {"cosine": metrics}})


def _record_training(session: Session, store: ObjectStore, run_id: int, *, speed: float, steps: int) -> None:
    for step in range(0, steps + 1, 10):
        loss = 8.0 * math.exp(-speed * step / steps) + 0.3
        runs.record_metrics(
            session,
            run_id,
            step,
            {"loss": loss, "identity_loss": loss * 0.8, "kl_loss": loss * 0.15, "domain_accuracy": 0.9},
        )


def _finish_with_eval(session: Session, store: ObjectStore, run_id: int, results: EvalResults) -> None:
    run = runs.get_run(session, run_id)
    steps = run.total_steps
    lifecycle.report_progress(session, run_id, step=steps, total_steps=steps, stage="done")
    runs.record_metrics(session, run_id, run.total_steps, results.flat_metrics())
    store.put_bytes(
        f"runs/{run_id}/plots/roc.json",
        json.dumps(roc_document(results)).encode(),
        content_type="application/json",
    )
    run.summary = {"evaluation": results.summary(), "plots": [f"runs/{run_id}/plots/roc.json"]}
    runs.mark_finished(session, run, "succeeded")


def _model(
    session: Session, store: ObjectStore, name: str, version: int, run_id: int, results: EvalResults
) -> int:
    data = f"weights of {name} v{version}".encode() * 200
    key = f"models/{name}/{version}/model.onnx"
    store.put_bytes(key, data)
    model = ModelVersion(
        name=name,
        version=version,
        run_id=run_id,
        card_sha256=hashlib.sha256(data).hexdigest(),
        signature=sign_bytes(data),
        artifacts={"model.onnx": {"key": key, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}},
        eval_summary=results.summary(),
    )
    session.add(model)
    session.flush()
    return model.id


def seed_console(engine: Engine, store: ObjectStore, settings: Settings, tmp: Path) -> Seeded:
    with Session(engine, expire_on_commit=False) as session:
        _, admin_key = create_api_key(session, name="ops-admin", role="admin")
        _, viewer_key = create_api_key(session, name="auditor", role="viewer")
        # Procedural faces (what `facefleet datasets synth` writes), small: 2 x 6 people x 3 images of 48 px.
        synth = generate_synthetic_datasets(
            tmp / "synth",
            num_datasets=2,
            identities_per_dataset=6,
            images_per_identity=3,
            verification_identities=4,
            verification_pairs=20,
            image_size=48,
        )
        for name, folder in zip(("faces-a", "faces-b"), synth.dataset_dirs, strict=True):
            register_dataset_version(session, store, name=name, source=folder, kind="train")
        register_dataset_version(
            session, store, name="faces-verify", source=synth.verification_dir, kind="verification"
        )
        session.commit()

        run_ids = []
        for index, (datasets, speed, separation) in enumerate(
            ((["faces-a", "faces-b"], 3.0, 1.2), (["faces-a"], 1.5, 0.7), (["faces-b"], 2.0, 0.9))
        ):
            run = runs.create_run(
                session,
                dataset_names_or_version_ids=datasets,
                verification_sets=["faces-verify"],
                config=TINY_CONFIG if len(datasets) > 1 else {**ONE_DATASET, "seed": index},
                created_by="key:1:ops-admin",
            )
            run.status, run.stage = "running", "training"
            _record_training(session, store, run.id, speed=speed, steps=run.total_steps)
            _finish_with_eval(session, store, run.id, _roc(index, separation))
            log = settings.data_dir / "runs" / f"{run.id}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(
                "".join(f"step {s}: loss {8 * math.exp(-s / 60):.3f}\n" for s in range(0, 201, 20))
            )
            run_ids.append(run.id)
        session.commit()

        live = runs.create_run(
            session,
            dataset_names_or_version_ids=["faces-a"],
            config=ONE_DATASET,
            created_by="key:1:ops-admin",
        )
        live.status, live.stage = "running", "training"
        lifecycle.report_progress(
            session, live.id, step=live.total_steps // 3, total_steps=live.total_steps, eta_seconds=95
        )
        _record_training(session, store, live.id, speed=2.0, steps=live.total_steps // 3)
        session.commit()

        from facefleet.platform.models import service as registry

        first = _model(session, store, "facefleet", 1, run_ids[1], _roc(1, 0.7))
        second = _model(session, store, "facefleet", 2, run_ids[0], _roc(0, 1.2))
        registry.set_alias(session, "facefleet", "production", 1)
        registry.set_alias(session, "facefleet", "candidate", 2)
        session.commit()

        fleet = []
        for index in range(5):
            device, _, _ = devices.register_device(session, name=f"door-{index + 1}", group="lobby")
            device.status, device.agent_version = "active", "0.1.0"
            device.health = {"cpu_temp_c": 48 + index, "fps": 12}
            fleet.append(device)
        session.flush()
        first_rollout = deployments.create_deployment(
            session, model_version_id=first, group="lobby", created_by="key:1:ops-admin"
        )
        for device in fleet:
            deployments.report_device_status(
                session, device, deployment_id=first_rollout.id, status="installed"
            )
        canary = deployments.create_deployment(
            session,
            model_version_id=second,
            group="lobby",
            strategy="canary",
            canary_percent=40,
            created_by="key:1:ops-admin",
        )
        deployments.report_device_status(session, fleet[0], deployment_id=canary.id, status="installed")
        deployments.report_device_status(session, fleet[1], deployment_id=canary.id, status="downloading")
        session.commit()

        policy = policies.create_policy(
            session,
            spec=PolicyCreate(
                name="nightly",
                triggers=["dataset_added"],
                verification_sets=["faces-verify"],
                auto_promote=True,
                base_config=TINY_CONFIG,
            ),
        )
        session.flush()
        # What the scheduler does when the policy's run 3 succeeds: its model (v3) scores below
        # production (v1), so auto-promote declines and says why in the audit log.
        _model(session, store, "facefleet", 3, run_ids[2], _roc(2, 0.3))
        outcomes.auto_promote(
            session,
            session.get(RetrainPolicy, policy.id),
            runs.get_run(session, run_ids[2]),
            evaluate=lambda *_: {},
            settings=settings,
            now=lifecycle.now(),
        )
        audit.record(session, "key:1:ops-admin", "datasets.register", "dataset", "faces-a", {"version": 1})
        session.commit()
        return Seeded(admin_key, viewer_key, run_ids, live.id, "facefleet", canary.id, policy.id)
