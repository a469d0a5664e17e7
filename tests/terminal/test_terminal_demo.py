"""The demo's terminal act: deploy to two simulated terminals, enroll and verify on each."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from facefleet.api.app import create_app
from facefleet.platform import auth
from facefleet.platform.store import ObjectStore
from facefleet.terminal.demo import deploy_to_simulated_terminals, serve_in_background
from tests.terminal.model_factory import register_test_model, trained_backbone
from tests.terminal.synthetic_faces import face


def test_deploy_to_two_terminals_then_enroll_and_verify(
    sqlite_engine: Engine, local_store: ObjectStore, tmp_path: Path
) -> None:
    with Session(sqlite_engine) as session:
        _key, admin_key = auth.create_api_key(session, name="demo", role="admin")
        net = trained_backbone(0, identities=32, steps=100)
        # Over trained_backbone seeds 0-4, native and ATEN_CPU_CAPABILITY=default (scripts/spreads/small.py):
        # genuine face(1, 5) scores 0.983 .. 0.995, impostor face(2, 0) 0.079 .. 0.560 (seed 0: 0.983/0.402).
        # 0.8 leaves >= 0.18 on each side (0.6 left 0.04 to the seed-4 impostor).
        version_id = register_test_model(session, local_store, tmp_path / "m", net=net, threshold=0.8).id
        session.commit()
    with serve_in_background(create_app(engine=sqlite_engine, store=local_store)) as url:
        results = deploy_to_simulated_terminals(
            url,
            admin_key,
            model_version_id=version_id,
            root=tmp_path / "terminals",
            enroll_images=[face(1, 0), face(1, 1)],
            genuine_image=face(1, 5),
            impostor_image=face(2, 0),
        )
    assert [r.model_version_id for r in results] == [version_id, version_id]
    assert all(r.genuine_match and not r.impostor_match for r in results)
    assert all(r.genuine_score > r.impostor_score for r in results)
