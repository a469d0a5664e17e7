"""The demo's terminal act with the threshold the product ships (not one set by hand): chosen by the run's
evaluation on a verification set of held-out people, at the card's 1% false-accept rate, on the scores a
terminal computes. The enrolled user is accepted; at most one of ten impostors is."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from facefleet.api.app import create_app
from facefleet.platform import auth
from facefleet.platform.runs.schemas import TrainingConfig
from facefleet.platform.store import ObjectStore
from facefleet.terminal.demo import deploy_to_simulated_terminals, serve_in_background
from facefleet.terminal.local import to_png
from facefleet.terminal.runtime import preprocess
from facefleet.workers.evaluate import EvalSet, evaluate_model
from tests.terminal.model_factory import register_test_model, trained_backbone
from tests.terminal.synthetic_faces import face

VERIFY_PEOPLE = range(20, 60)  # held-out people of the verification set (the user and impostors: 1-11)


def terminal_input(image: object) -> torch.Tensor:
    """What the terminal feeds the network: the PNG it stores, resized (runtime.preprocess)."""
    return torch.from_numpy(preprocess(to_png(image), 32))  # type: ignore[arg-type]


def verification_set() -> EvalSet:
    left, right, same = [], [], []
    people = list(VERIFY_PEOPLE)
    for index, person in enumerate(people):
        for capture in range(5):  # 5 genuine and 5 impostor pairs per person: 200 + 200 pairs
            left.append(terminal_input(face(person, capture)))
            right.append(terminal_input(face(person, capture + 5)))
            same.append(True)
            other = people[(index + 1 + capture) % len(people)]
            left.append(terminal_input(face(person, 10 + capture)))
            right.append(terminal_input(face(other, 10 + capture)))
            same.append(False)
    return EvalSet("verif", torch.stack(left), torch.stack(right), torch.tensor(same))


@pytest.mark.slow
def test_terminals_accept_the_user_at_the_card_threshold(
    sqlite_engine: Engine, local_store: ObjectStore, tmp_path: Path
) -> None:
    net = trained_backbone(0, identities=32, steps=100)
    config = TrainingConfig(
        backbone="tiny", embedding_dim=net.embedding_dim, input_size=32, operating_far=0.01
    )
    results = evaluate_model(net, None, [verification_set()], config)
    point = results.operating_point()
    assert point is not None and point.reliable and point.impostor_pairs == 200
    threshold = results.cosine_threshold(config.operating_far)
    assert threshold == point.threshold
    with Session(sqlite_engine) as session:
        _key, admin_key = auth.create_api_key(session, name="demo", role="admin")
        version_id = register_test_model(
            session, local_store, tmp_path / "m", net=net, threshold=threshold
        ).id
        session.commit()
    with serve_in_background(create_app(engine=sqlite_engine, store=local_store)) as url:
        outcomes = deploy_to_simulated_terminals(
            url,
            admin_key,
            model_version_id=version_id,
            root=tmp_path / "terminals",
            enroll_images=[face(1, 0), face(1, 1), face(1, 2)],
            genuine_image=face(1, 3),
            impostor_image=[face(person, 0) for person in range(2, 12)],
        )
    fused = results.sets["verif"]["cosine"].threshold_at_operating_far
    print(f"threshold single-view {threshold:.4f}, flip-fused {fused:.4f}; ", outcomes)
    assert all(r.genuine_match for r in outcomes)
    assert all(r.impostors_tried == 10 and r.impostors_accepted <= 1 for r in outcomes)
