"""On-device adaptation (seed 000) on synthetic users whose appearance drifts over time."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from facefleet.terminal.adaptation import SEED_METHOD
from facefleet.terminal.guard import GuardConfig
from facefleet.terminal.local import Identity, Terminal
from facefleet.terminal.runtime import ADAPTED_FILE
from tests.terminal.model_factory import trained_backbone, write_artifacts
from tests.terminal.synthetic_faces import face

USERS = range(6)
THRESHOLD = 0.7
FINAL_DRIFT = 0.6


def _terminal(tmp_path: Path, guard: GuardConfig, seed: int = 0) -> Terminal:
    """A terminal with a trained tiny model installed from a card signed by a key it pinned."""
    key = Ed25519PrivateKey.generate()
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    card = write_artifacts(
        tmp_path / "artifacts", trained_backbone(seed, identities=64, steps=300), threshold=THRESHOLD
    )
    card_bytes = card.to_bytes()
    # Guard off: the seed's method as filed (every accepted input is a positive, no probe check).
    terminal = Terminal(tmp_path / "terminal", guard=guard, adaptation=None if guard.enabled else SEED_METHOD)
    terminal.save_identity(
        Identity(
            server_url="http://unused",
            device_id=1,
            name="t",
            group="g",
            credential="ffd_unused",
            public_key_pem=pem,
            adaptation_enabled=True,
        )
    )
    terminal.install(1, tmp_path / "artifacts", card_bytes, base64.b64encode(key.sign(card_bytes)).decode())
    return terminal


def _scores(terminal: Terminal, drift: float) -> tuple[np.ndarray, np.ndarray]:
    """Held-out genuine and impostor scores, measured with adaptation switched off (no learning here)."""
    identity = terminal.require_identity()
    terminal.save_identity(identity.model_copy(update={"adaptation_enabled": False}))
    genuine = [
        terminal.verify_user(f"u{u}", face(u, 900 + c, drift=drift)).score for u in USERS for c in range(3)
    ]
    impostor = [
        terminal.verify_user(f"u{u}", face((u + k) % 6, 950 + c, drift=drift)).score
        for u in USERS
        for k in (1, 2)
        for c in range(2)
    ]
    terminal.save_identity(identity)
    return np.array(genuine), np.array(impostor)


def _drift(terminal: Terminal) -> tuple[int, int, int]:
    """Users come back as they change; (accepted, updates committed, updates refused)."""
    accepted = updates = refused = 0
    for step, drift in enumerate(np.linspace(0.05, FINAL_DRIFT, 12)):
        for user in USERS:
            result = terminal.verify_user(f"u{user}", face(user, 100 + step, drift=float(drift)))
            accepted += result.match
            updates += result.adapted_now
            refused += result.update_refused
    return accepted, updates, refused


def measure(tmp_path: Path, guard: GuardConfig, seed: int = 0) -> dict[str, float]:
    """One drifting run (model seed ``seed``): what the tests below assert on (scripts/spreads/adaptation.py
    prints it over seeds and CPU capabilities)."""
    terminal = _terminal(tmp_path, guard, seed)
    for user in USERS:
        terminal.enroll_user(f"u{user}", [face(user, c) for c in range(3)])
    genuine_before, impostor_before = _scores(terminal, FINAL_DRIFT)
    accepted, updates, refused = _drift(terminal)
    genuine_after, impostor_after = _scores(terminal, FINAL_DRIFT)
    status = terminal.adaptation_status()
    return {
        "updates": updates,
        "refused": refused,
        "accepted": accepted,
        "genuine_before": float(genuine_before.mean()),
        "genuine_after": float(genuine_after.mean()),
        "genuine_gain": float(genuine_after.mean() - genuine_before.mean()),
        "accept_before": float(np.mean(genuine_before >= THRESHOLD)),
        "accept_after": float(np.mean(genuine_after >= THRESHOLD)),
        "impostor_mean_after": float(impostor_after.mean()),
        "impostor_max_before": float(impostor_before.max()),
        "impostor_max_after": float(impostor_after.max()),
        "false_accepts_before": int(np.sum(impostor_before >= THRESHOLD)),
        "false_accepts_after": int(np.sum(impostor_after >= THRESHOLD)),
        "probe_far": -1.0 if status is None or status.probe_far is None else status.probe_far,
        "probe_far_shipped": -1.0
        if status is None or status.probe_far_shipped is None
        else status.probe_far_shipped,
    }


@pytest.mark.slow
def test_adaptation_raises_genuine_scores_under_drift_and_keeps_impostors_low(tmp_path: Path) -> None:
    """The seed's method alone (guard off): what it learns, and the false accepts the guard exists for."""
    terminal = _terminal(tmp_path, GuardConfig(enabled=False))
    for user in USERS:
        terminal.enroll_user(f"u{user}", [face(user, c) for c in range(3)])
    genuine_before, impostor_before = _scores(terminal, FINAL_DRIFT)
    templates_before = [t.embedding for t in terminal.db.templates("1")]
    model_files = {p.name: p.read_bytes() for p in (terminal.model_dir(1)).iterdir()}

    accepted, updates, _refused = _drift(terminal)

    genuine_after, impostor_after = _scores(terminal, FINAL_DRIFT)
    print(
        f"\nadaptation: {updates} updates, {accepted}/72 drifting verifications accepted; at drift "
        f"{FINAL_DRIFT}: genuine mean {genuine_before.mean():.3f} -> {genuine_after.mean():.3f} "
        f"(accepted {np.mean(genuine_before >= THRESHOLD):.0%} -> "
        f"{np.mean(genuine_after >= THRESHOLD):.0%}), "
        f"impostor mean {impostor_before.mean():.3f} -> {impostor_after.mean():.3f}, "
        f"max {impostor_before.max():.3f} -> {impostor_after.max():.3f}, "
        f"false accepts {np.sum(impostor_before >= THRESHOLD)} -> {np.sum(impostor_after >= THRESHOLD)}"
        f"/{impostor_after.size} (threshold {THRESHOLD})"
    )
    # Bounds measured over model seeds 0-4, natively (AVX2) and with ATEN_CPU_CAPABILITY=default (10 runs)
    # for the seed's method before issue 18's second pass changed the loss (positive target re-extracted,
    # negatives hinged at threshold - 0.2); that pass could not re-measure all seeds on the loaded machine
    # (scripts/spreads/adaptation.py does it). Re-measured on model seed 0: native (AVX-512) 18 updates,
    # gain 0.53, 100 % accepted, impostor mean 0.415, 0/24 false accepts; ATEN_CPU_CAPABILITY=default
    # 17 updates, gain 0.45, 83 %, impostor mean 0.315, 0/24. Both inside every bound below.
    assert updates >= 12  # measured 16-18
    assert genuine_after.mean() > genuine_before.mean() + 0.3  # gain measured 0.42-0.60
    assert np.mean(genuine_before >= THRESHOLD) < 0.2  # measured 0% everywhere
    assert np.mean(genuine_after >= THRESHOLD) >= 0.5  # measured 67-100%
    assert impostor_after.mean() < THRESHOLD - 0.25  # measured 0.03-0.27
    # Unguarded adaptation lets look-alikes in: measured 0-5 of 24 pairs (issue 18's guard).
    assert np.sum(impostor_after >= THRESHOLD) <= 8
    # Templates were re-extracted from the stored middle features; the platform's files are untouched.
    assert not np.allclose(templates_before, [t.embedding for t in terminal.db.templates("1")], atol=1e-3)
    assert (terminal.model_dir(1) / ADAPTED_FILE).exists()
    assert all((terminal.model_dir(1) / name).read_bytes() == data for name, data in model_files.items())


@pytest.mark.slow
def test_guarded_adaptation_adds_no_false_accepts(tmp_path: Path) -> None:
    """The default terminal (guard on), same drifting users: no impostor pair crosses the threshold that did
    not before, and every committed update kept the held-out probe's FAR at or under the shipped model's."""
    terminal = _terminal(tmp_path, GuardConfig())
    for user in USERS:
        terminal.enroll_user(f"u{user}", [face(user, c) for c in range(3)])
    genuine_before, impostor_before = _scores(terminal, FINAL_DRIFT)
    _accepted, updates, refused = _drift(terminal)
    genuine_after, impostor_after = _scores(terminal, FINAL_DRIFT)
    status = terminal.adaptation_status()
    assert status is not None
    print(
        f"\nguarded adaptation: {updates} committed, {refused} refused; genuine mean "
        f"{genuine_before.mean():.3f} -> {genuine_after.mean():.3f}; impostor max "
        f"{impostor_before.max():.3f} -> {impostor_after.max():.3f}; probe FAR {status.probe_far_shipped} -> "
        f"{status.probe_far}; last refusal: {status.last_rejection}"
    )
    # Probe split by user + recent captures + near-miss/tail checks (issue 18, third pass), measured with
    # scripts/spreads/adaptation.py over model seeds 0-4, natively (AVX-512) and ATEN_CPU_CAPABILITY=default
    # (the same to 3 decimals): 0-2 committed / 5-9 refused, genuine mean change -0.057..0.000, 0 -> 0
    # false accepts, impostor max after 0.30-0.55. The guard now refuses nearly every update on these users
    # (the previous guard committed 6-8 and raised genuine scores by 0.14-0.26; the seed's method by
    # 0.36-0.62 with 0-2 false accepts): on real faces that guard let impostors in (bench/adaptation.py).
    assert updates + refused >= 4  # attempts measured 6-9 (both capabilities)
    assert status.updates_applied == updates and status.updates_rejected == refused
    assert status.probe_far is not None and status.probe_far <= (status.probe_far_shipped or 0.0)
    assert np.sum(impostor_after >= THRESHOLD) <= np.sum(impostor_before >= THRESHOLD)  # measured 0 -> 0
    assert impostor_after.max() < THRESHOLD - 0.1  # measured 0.30-0.55
    assert genuine_after.mean() >= genuine_before.mean() - 0.12  # measured -0.057 at worst
