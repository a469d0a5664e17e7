"""What a distill run knows about the people in its inspection sets: the codes read back from real
inspection sets (made by the collection path) and the cross pairs a batch derives from them."""

from __future__ import annotations

import numpy as np
import torch
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from facefleet.nn.distill import cross_pair_verdicts
from facefleet.platform.store import ObjectStore
from facefleet.workers.distill import InspectionPairs, _pair_batch, read_inspection_set
from tests.platform.inspections.factories import crop_png, make_version
from tests.workers.distill_helpers import register_inspection_set


def _set(
    session: Session, store: ObjectStore, name: str, users: list[str], verdicts: list[str]
) -> tuple[str, str]:
    attempts = [(crop_png(100 + i), crop_png(200 + i), v) for i, v in enumerate(verdicts)]
    version = register_inspection_set(session, store, name, attempts, users=users)
    assert version.manifest_key is not None
    return version.manifest_key, version.manifest_key.replace("manifest.parquet", "pairs.parquet")


def test_codes_name_the_claimed_user_the_confirmed_attempt_and_the_terminal(
    sqlite_engine: Engine, local_store: ObjectStore
) -> None:
    with Session(sqlite_engine) as session:
        make_version(session)
        hall = _set(
            session,
            local_store,
            "hall",
            ["ann", "bob", "ann", "bob"],
            ["genuine", "genuine", "impostor", "genuine"],
        )
        gate = _set(session, local_store, "gate", ["ann"], ["genuine"])  # another terminal's "ann"
        session.commit()
    codes: dict[str, int] = {}
    first = read_inspection_set(local_store, *hall, 16, codes)
    second = read_inspection_set(local_store, *gate, 16, codes)
    claimed, probe, device = first.claimed, first.probe, first.device
    claimed2, probe2, device2 = second.claimed, second.probe, second.device
    assert first.genuine.tolist() == [True, True, False, True] and first.reference.shape[-1] == 16
    # attempts are packed in id order: ann, bob, ann (impostor), bob
    assert claimed[0] == claimed[2] != claimed[1] == claimed[3]
    assert probe.tolist() == [int(claimed[0]), int(claimed[1]), -1, int(claimed[3])]
    assert len(set(device.tolist())) == 1
    # one numbering across sets: the other terminal's ann is another code on another terminal
    assert int(claimed2[0]) not in claimed.tolist() and int(device2[0]) != int(device[0])
    assert int(probe2[0]) == int(claimed2[0])

    pairs = InspectionPairs(
        reference=torch.zeros(5, 3, 4, 4),
        attempt=torch.zeros(5, 3, 4, 4),
        genuine=torch.tensor([True, True, False, True, True]),
        claimed=torch.cat([claimed, claimed2]),
        probe=torch.cat([probe, probe2]),
        device=torch.cat([device, device2]),
    )
    crops, verdicts = _pair_batch(pairs, 64, np.random.default_rng(0), cross_pairs=True)
    assert crops.shape == (128, 3, 4, 4) and verdicts.shape == (64, 64) and verdicts.dtype == torch.int8
    pick = torch.from_numpy(np.random.default_rng(0).integers(0, len(pairs), 64))  # the batch's draw
    expected = cross_pair_verdicts(
        pairs.claimed[pick], pairs.probe[pick], pairs.device[pick], pairs.genuine[pick]
    )
    assert torch.equal(verdicts, expected)
    assert set(torch.unique(verdicts).tolist()) == {-1, 0, 1}  # gate's pairs are unknown against hall's
    _, same = _pair_batch(pairs, 64, np.random.default_rng(0), cross_pairs=False)
    assert torch.equal(same, pairs.genuine[pick])
