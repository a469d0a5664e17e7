"""The adapted upper part on disk: safetensors with a SHA-256 of its tensors, plus the adaptation's counters.

A file that does not parse (half-written) or whose tensors do not hash to the recorded checksum (corrupted),
or that names tensors the model does not have, raises ``CorruptAdaptedState``: the terminal then falls back
to the shipped model and reports it. Counters live in a small JSON file next to it, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

ADAPTED_FILE = "adapted_upper.safetensors"  # written on the device only; never uploaded
STATE_FILE = "adaptation.json"
CHECKSUM_KEY = "facefleet_sha256"


class CorruptAdaptedState(Exception):
    """The adapted upper part on disk cannot be trusted."""


class AdaptationStatus(BaseModel):
    """What a terminal reports about adaptation of its current model (heartbeat ``health.adaptation``)."""

    updates_applied: int = 0
    updates_rejected: int = 0
    last_rejection: str | None = None
    probe_far: float | None = None
    probe_max_impostor: float | None = None
    probe_far_shipped: float | None = None
    relative_drift: float = 0.0
    negative_pressure: float = 0.0
    resets: int = 0
    last_reset: str | None = None
    fallbacks: int = 0
    last_fallback: str | None = None
    events: list[str] = Field(default_factory=list)  # the latest few, newest last

    def note(self, event: str, keep: int = 10) -> None:
        self.events = [*self.events, event][-keep:]


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    """A checksum over names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_adapted(path: Path, state: dict[str, torch.Tensor]) -> str:
    """Write atomically (temp file, fsync, rename) with the checksum in the file's metadata."""
    state = {name: tensor.detach().clone().contiguous() for name, tensor in state.items()}
    checksum = tensors_sha256(state)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={CHECKSUM_KEY: checksum})
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return checksum


def load_adapted(path: Path, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Load and check: parses, checksum matches, same tensor names, shapes and dtypes as ``expected``."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            recorded = (handle.metadata() or {}).get(CHECKSUM_KEY)
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CorruptAdaptedState(f"{path.name} does not parse ({exc})") from exc
    if recorded is None:
        raise CorruptAdaptedState(f"{path.name} carries no checksum")
    actual = tensors_sha256(state)
    if actual != recorded:
        raise CorruptAdaptedState(
            f"{path.name} checksum mismatch (recorded {recorded[:12]}, got {actual[:12]})"
        )
    if set(state) != set(expected):
        raise CorruptAdaptedState(f"{path.name} holds other tensors than the model's upper part")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape or tensor.dtype != expected[name].dtype:
            raise CorruptAdaptedState(f"{path.name}: {name} is {tuple(tensor.shape)} {tensor.dtype}")
        if not torch.isfinite(tensor).all():
            raise CorruptAdaptedState(f"{path.name}: {name} holds non-finite values")
    return state


def read_status(path: Path) -> AdaptationStatus:
    """Counters survive restarts; an unreadable file starts them again (and says so)."""
    if not path.exists():
        return AdaptationStatus()
    try:
        return AdaptationStatus.model_validate_json(path.read_bytes())
    except (ValidationError, OSError, ValueError) as exc:
        status = AdaptationStatus()
        status.note(f"counters unreadable, restarted: {type(exc).__name__}")
        return status


def write_status(path: Path, status: AdaptationStatus) -> None:
    tmp = path.with_name(path.name + ".tmp")
    data: dict[str, Any] = status.model_dump()
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
