"""The impostor-probe guard of on-device adaptation (issue 18): rollback, bounded drift, reset, reporting,
corrupt adapted state. Every assertion holds by construction (no learned threshold), on any CPU."""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from facefleet.nn.backbones import Backbone
from facefleet.terminal.adaptation import AdaptationConfig, UpperLayerAdapter
from facefleet.terminal.adapted_state import (
    ADAPTED_FILE,
    CorruptAdaptedState,
    load_adapted,
    save_adapted,
)
from facefleet.terminal.agent import TerminalAgent
from facefleet.terminal.guard import (
    GuardConfig,
    GuardDecision,
    ImpostorProbe,
    ProbeReport,
    judge,
    split_captures,
)
from facefleet.terminal.local import Identity, Terminal
from facefleet.terminal.templates import TemplateDB
from tests.terminal.model_factory import trained_backbone, write_artifacts
from tests.terminal.synthetic_faces import face, face_batch

THRESHOLD = 0.7


@dataclass
class Shipped:
    folder: Path
    card_bytes: bytes
    signature: str
    pem: str


@pytest.fixture(scope="module")
def net() -> Backbone:
    return trained_backbone(0, identities=32, steps=120)


@pytest.fixture(scope="module")
def shipped(net: Backbone, tmp_path_factory: pytest.TempPathFactory) -> Shipped:
    key = Ed25519PrivateKey.generate()
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    folder = tmp_path_factory.mktemp("artifacts")
    card_bytes = write_artifacts(folder, net, threshold=THRESHOLD).to_bytes()
    return Shipped(folder, card_bytes, base64.b64encode(key.sign(card_bytes)).decode(), pem)


def _terminal(data_dir: Path, shipped: Shipped, **kwargs: object) -> Terminal:
    terminal = Terminal(data_dir, **kwargs)  # type: ignore[arg-type]
    if terminal.identity() is None:
        terminal.save_identity(
            Identity(
                server_url="http://unused",
                device_id=1,
                name="t",
                group="g",
                credential="ffd_unused",
                public_key_pem=shipped.pem,
                adaptation_enabled=True,
            )
        )
        terminal.install(1, shipped.folder, shipped.card_bytes, shipped.signature)
        for user in range(4):
            terminal.enroll_user(f"u{user}", [face(user, c) for c in range(3)])
    return terminal


def _embeddings(terminal: Terminal) -> np.ndarray:
    return np.stack([t.embedding for t in terminal.db.templates(str(terminal.current_version_id()))])


def _adapt_once(terminal: Terminal) -> None:
    """Genuine verifications until one update is committed (the guard is off in these terminals)."""
    for capture in range(100, 140):
        if terminal.verify_user("u0", face(0, capture)).adapted_now:
            return
    raise AssertionError("no adaptation update within 40 genuine verifications")


def _upper(adapter: UpperLayerAdapter) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in adapter.parameters.items()}


def _fill(adapter: UpperLayerAdapter, net: Backbone) -> None:
    middles = net.forward_lower(face_batch([0, 1, 2, 3], capture_offset=50, drift=0.3)).detach()
    with torch.no_grad():
        template = torch.nn.functional.normalize(net.forward_upper(middles[:1]), dim=-1)[0]
    while not adapter.observe_success(middles[:1], template, middles[1:]):
        pass


def test_a_refused_update_restores_the_previous_upper_part_bit_for_bit(net: Backbone) -> None:
    adapter = UpperLayerAdapter(_clone(net), AdaptationConfig(learning_rate=0.5, backtracks=2))
    before = _upper(adapter)
    _fill(adapter, adapter.backbone)
    report = ProbeReport(far=0.0, max_impostor=0.1, genuine_accept=1.0, impostor_pairs=1)
    attempts: list[dict[str, torch.Tensor]] = []

    def refuse() -> GuardDecision:
        attempts.append(_upper(adapter))
        return GuardDecision(False, "refused for the test", report, report)

    outcome = adapter.try_update(refuse)
    assert not outcome.applied and adapter.rejected == 1 and adapter.updates == 0
    assert len(attempts) == 3  # the full step, then half, then a quarter
    moved = [sum(float((a[n] - before[n]).norm()) for n in before) for a in attempts]
    assert moved[0] > moved[1] > moved[2] > 0
    assert all(torch.equal(p, before[n]) for n, p in adapter.parameters.items())
    assert adapter.positive.count == adapter.negative.count == 0


def test_the_guard_refuses_a_poisoned_update_that_unguarded_would_commit(net: Backbone) -> None:
    """An impostor's images pulled onto u0's template (what a false accept would feed the adapter)."""
    users = [f"u{u}" for u in range(4) for _ in range(3)]
    middles = net.forward_lower(face_batch([u for u in range(4) for _ in range(3)])).detach()
    probe = ImpostorProbe.build(middles, users, list(range(12)), net.forward_lower, 32, GuardConfig())
    shipped = probe.evaluate(net.forward_upper, THRESHOLD)
    outcomes = {}
    for guarded in (True, False):
        backbone = _clone(net)
        adapter = UpperLayerAdapter(backbone, AdaptationConfig(learning_rate=1.0, negatives_per_positive=0))
        with torch.no_grad():
            template = torch.nn.functional.normalize(backbone.forward_upper(middles[:1]), dim=-1)[0]
        impostor = middles[9:12]  # u3's images
        for i in range(4):
            adapter.observe_success(impostor[i % 3 : i % 3 + 1], template)

        def guard(b: Backbone = backbone) -> GuardDecision:
            return judge(shipped, probe.evaluate(b.forward_upper, THRESHOLD), THRESHOLD, GuardConfig())

        before = _upper(adapter)
        outcomes[guarded] = adapter.try_update(guard if guarded else None)
        after = probe.evaluate(backbone.forward_upper, THRESHOLD)
        if guarded:
            assert after == shipped or outcomes[guarded].applied
            if not outcomes[guarded].applied:
                assert all(torch.equal(p, before[n]) for n, p in adapter.parameters.items())
        else:
            unguarded_after = after
    # Unguarded, the poisoned step lets impostors closer on the held-out probe; guarded, what is committed
    # (if anything, at a smaller step) never raises the probe FAR or the closest impostor past the ceiling.
    assert unguarded_after.max_impostor > shipped.max_impostor
    decision = outcomes[True].decision
    assert decision is not None
    if outcomes[True].applied:
        assert decision.candidate.far <= shipped.far
        assert decision.candidate.max_impostor < max(THRESHOLD - 0.1, shipped.max_impostor)
    else:
        assert "probe" in decision.reason


def test_judge_rules() -> None:
    base = ProbeReport(far=0.01, max_impostor=0.5, genuine_accept=0.9, impostor_pairs=100)
    config = GuardConfig(margin=0.1)
    same = judge(base, base, THRESHOLD, config)
    assert same.accepted
    more_far = ProbeReport(0.02, 0.5, 0.9, 100)
    assert not judge(base, more_far, THRESHOLD, config).accepted
    too_close = ProbeReport(0.01, 0.61, 0.9, 100)  # above threshold - margin
    assert not judge(base, too_close, THRESHOLD, config).accepted
    assert judge(base, ProbeReport(0.0, 0.59, 0.9, 100), THRESHOLD, config).accepted
    fewer_genuine = ProbeReport(0.01, 0.5, 0.8, 100)
    assert not judge(base, fewer_genuine, THRESHOLD, config).accepted
    # A shipped model already closer than the margin: the ceiling is its own closest impostor.
    close_shipped = ProbeReport(0.0, 0.65, 1.0, 100)
    nearer, farther = ProbeReport(0.0, 0.66, 1.0, 100), ProbeReport(0.0, 0.64, 1.0, 100)
    assert judge(close_shipped, farther, THRESHOLD, config, close_shipped).accepted
    assert not judge(close_shipped, nearer, THRESHOLD, config, close_shipped).accepted
    assert judge(base, more_far, THRESHOLD, GuardConfig(enabled=False)).accepted


def test_judge_refuses_near_misses_and_a_creeping_tail_below_the_threshold() -> None:
    """No pair crosses the threshold in any of these, but impostors come closer: refused."""
    base = ProbeReport(0.0, 0.5, 0.9, 100, near_far=0.02, tail_mean=0.40)
    config = GuardConfig(margin=0.1)
    more_near_misses = replace(base, near_far=0.03)
    creeping_tail = replace(base, tail_mean=0.42)
    assert "near misses" in judge(base, more_near_misses, THRESHOLD, config).reason
    assert "closest" in judge(base, creeping_tail, THRESHOLD, config).reason
    assert judge(base, replace(base, near_far=0.01, tail_mean=0.38), THRESHOLD, config).accepted
    off = GuardConfig(margin=0.1, near_misses=False, tail_fraction=0)
    assert judge(base, more_near_misses, THRESHOLD, off).accepted
    assert judge(base, creeping_tail, THRESHOLD, off).accepted


def test_the_probe_reports_near_misses_and_the_tail_at_its_guard_settings(net: Backbone) -> None:
    users = [f"u{u}" for u in range(4) for _ in range(3)]
    middles = net.forward_lower(face_batch([u for u in range(4) for _ in range(3)])).detach()
    config = GuardConfig(margin=0.3, tail_fraction=0.5)
    probe = ImpostorProbe.build(middles, users, list(range(12)), net.forward_lower, 32, config)
    report = probe.evaluate(net.forward_upper, THRESHOLD)
    assert (probe.margin, probe.tail_fraction) == (0.3, 0.5)
    assert report.far <= report.near_far <= 1.0
    assert report.tail_mean <= report.max_impostor


def test_drift_from_the_shipped_weights_is_bounded(net: Backbone) -> None:
    adapter = UpperLayerAdapter(_clone(net), AdaptationConfig(learning_rate=50.0, max_relative_drift=0.02))
    for _ in range(3):
        _fill(adapter, adapter.backbone)
        assert adapter.try_update().applied
        assert adapter.relative_drift() <= 0.02 + 1e-6
    assert adapter.relative_drift() > 0.019  # the huge steps were scaled back, not dropped


def test_adapted_state_checksum_rejects_half_written_and_corrupted_files(tmp_path: Path) -> None:
    state = {"a.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4), "a.n": torch.tensor(3)}
    path = tmp_path / ADAPTED_FILE
    save_adapted(path, state)
    loaded = load_adapted(path, state)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 7])  # half-written
    with pytest.raises(CorruptAdaptedState, match="does not parse"):
        load_adapted(path, state)
    flipped = bytearray(data)
    flipped[-5] ^= 0x40  # a bit flip in the tensor bytes
    path.write_bytes(bytes(flipped))
    with pytest.raises(CorruptAdaptedState, match="checksum"):
        load_adapted(path, state)
    from safetensors.torch import save_file

    save_file(state, str(path))  # a file without our checksum
    with pytest.raises(CorruptAdaptedState, match="no checksum"):
        load_adapted(path, state)
    save_adapted(path, {"other": torch.zeros(2)})
    with pytest.raises(CorruptAdaptedState, match="other tensors"):
        load_adapted(path, state)


def test_corrupt_adapted_state_falls_back_to_the_shipped_model_at_start_up(
    tmp_path: Path, shipped: Shipped
) -> None:
    terminal = _terminal(tmp_path, shipped, guard=GuardConfig(enabled=False))
    shipped_templates = _embeddings(terminal)
    _adapt_once(terminal)
    path = terminal.model_dir(1) / ADAPTED_FILE
    assert path.exists() and not np.allclose(_embeddings(terminal), shipped_templates, atol=1e-4)
    data = bytearray(path.read_bytes())
    data[-9] ^= 0x10
    path.write_bytes(bytes(data))

    restarted = Terminal(tmp_path)
    model = restarted.current_model()
    assert model is not None and not model.adapted
    assert (restarted.model_dir(1) / (ADAPTED_FILE + ".corrupt")).exists()
    status = restarted.adaptation_status()
    assert status is not None and status.fallbacks == 1 and "checksum" in (status.last_fallback or "")
    np.testing.assert_allclose(_embeddings(restarted), shipped_templates, atol=1e-4)
    assert restarted.verify_user("u1", face(1, 300)).model_version_id == 1
    health = TerminalAgent(restarted, server_url="http://unused").health()
    assert health["adaptation"]["fallbacks"] == 1 and health["adapted"] is False


def test_reset_on_request_and_on_a_new_deployment(tmp_path: Path, shipped: Shipped) -> None:
    terminal = _terminal(tmp_path, shipped, guard=GuardConfig(enabled=False))
    shipped_templates = _embeddings(terminal)
    _adapt_once(terminal)
    status = terminal.reset_adaptation()
    assert status.resets == 1 and status.updates_applied == 0
    assert not (terminal.model_dir(1) / ADAPTED_FILE).exists()
    np.testing.assert_allclose(_embeddings(terminal), shipped_templates, atol=1e-4)

    _adapt_once(terminal)  # adapted again, then the platform deploys version 2 and later rolls back to 1
    terminal.install(2, shipped.folder, shipped.card_bytes, shipped.signature)
    assert not (terminal.model_dir(2) / ADAPTED_FILE).exists()
    terminal.switch_to(1)
    assert not (terminal.model_dir(1) / ADAPTED_FILE).exists()
    status = terminal.adaptation_status()
    assert status is not None and status.resets == 2 and status.last_reset == "new deployment"
    np.testing.assert_allclose(_embeddings(terminal), shipped_templates, atol=1e-4)


@pytest.mark.slow
def test_guarded_updates_are_counted_and_reported_in_heartbeats(tmp_path: Path, shipped: Shipped) -> None:
    terminal = _terminal(tmp_path, shipped, adaptation=AdaptationConfig(positives_per_update=2))
    attempts = 0
    for capture in range(100, 124):
        result = terminal.verify_user(f"u{capture % 4}", face(capture % 4, capture, drift=0.2))
        assert not (result.adapted_now and result.update_refused)
        attempts += result.adapted_now + result.update_refused
    status = terminal.adaptation_status()
    assert status is not None and attempts >= 3
    assert status.updates_applied + status.updates_rejected == attempts
    assert status.probe_far is not None and status.probe_far_shipped is not None
    assert status.probe_far <= status.probe_far_shipped  # committed updates never raise it
    assert (terminal.model_dir(1) / ADAPTED_FILE).exists() == (status.updates_applied > 0)
    health = TerminalAgent(terminal, server_url="http://unused").health()
    assert health["adaptation"]["updates_applied"] == status.updates_applied
    assert health["adaptation"]["updates_rejected"] == status.updates_rejected
    assert health["adaptation"]["probe_far"] == status.probe_far


def _clone(net: Backbone) -> Backbone:
    import copy

    return copy.deepcopy(net).eval()


# ---- the drifted probe: recent accepted captures (issue 18)


def test_the_capture_ring_keeps_the_newest_and_is_erased_with_the_model_and_the_user(tmp_path: Path) -> None:
    db = TemplateDB(tmp_path / "t.sqlite")
    middle = np.zeros((2, 3), dtype=np.float32)
    for k in range(6):
        db.add_capture("1", f"u{k % 2}", middle + k, keep=4)
    db.add_capture("2", "u0", middle, keep=4)
    kept = db.captures("1")
    assert [c.user for c in kept] == ["u0", "u1", "u0", "u1"]
    assert [float(c.middle[0, 0]) for c in kept] == [2.0, 3.0, 4.0, 5.0]  # the newest four, in order
    assert kept[0].middle.shape == (2, 3)
    db.delete_user("u1")
    assert [c.user for c in db.captures("1")] == ["u0", "u0"]
    db.drop_model("1")
    assert db.captures("1") == [] and len(db.captures("2")) == 1


def test_captures_stay_on_their_side_of_the_split_as_the_ring_turns() -> None:
    probe, update = split_captures([3, 4, 5, 6])
    assert probe == [1, 3] and update == [0, 2]
    later_probe, _ = split_captures([5, 6, 7, 8])  # 3 and 4 left the ring, 7 and 8 came in
    assert [[5, 6, 7, 8][i] for i in later_probe] == [6, 8]


def test_a_capture_is_an_impostor_for_everyone_but_the_user_it_was_accepted_as(net: Backbone) -> None:
    users = [f"u{u}" for u in range(4) for _ in range(3)]
    middles = net.forward_lower(face_batch([u for u in range(4) for _ in range(3)])).detach()
    config = GuardConfig(synthetic_probes=0)
    plain = ImpostorProbe.build(middles, users, list(range(12)), net.forward_lower, 32, config)
    as_owner = ImpostorProbe.build(
        middles, users, list(range(12)), net.forward_lower, 32, config, captures=(middles[:1], ["u0"])
    )
    as_other = ImpostorProbe.build(
        middles, users, list(range(12)), net.forward_lower, 32, config, captures=(middles[:1], ["u1"])
    )
    base = plain.evaluate(net.forward_upper, THRESHOLD)
    owner = as_owner.evaluate(net.forward_upper, THRESHOLD)
    other = as_other.evaluate(net.forward_upper, THRESHOLD)
    # u0's own enrolled image, accepted as u0: an impostor pair for u1, u2, u3 only
    assert owner.impostor_pairs == base.impostor_pairs + 3
    # the same image accepted as u1 is an impostor for u0 too, where it matches a template exactly
    assert other.impostor_pairs == base.impostor_pairs + 3
    assert other.max_impostor == pytest.approx(1.0, abs=1e-5) and other.far > base.far
    assert owner.max_impostor < 0.9999


def test_accepted_captures_are_recorded_only_behind_the_guard(tmp_path: Path, shipped: Shipped) -> None:
    guarded = _terminal(tmp_path / "on", shipped, guard=GuardConfig(recent_captures=5))
    unguarded = _terminal(tmp_path / "off", shipped, guard=GuardConfig(enabled=False))
    accepted = 0
    for capture in range(100, 108):
        accepted += guarded.verify_user("u1", face(1, capture)).match
        unguarded.verify_user("u1", face(1, capture))
    assert accepted >= 6  # undrifted genuine captures (8 of 8, native and ATEN default)
    captures = guarded.db.captures(str(guarded.current_version_id()))
    assert len(captures) == min(accepted, 5) and {c.user for c in captures} <= {"u1"}
    assert unguarded.db.captures(str(unguarded.current_version_id())) == []
