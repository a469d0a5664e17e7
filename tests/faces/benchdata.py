"""Where the shared real-face benchmark data lives (../shared/benchdata from the repo root)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def benchdata(name: str) -> Path:
    """The folder of benchmark set ``name``; the test is skipped, saying why, when it is missing."""
    candidates = [
        Path(os.environ["FACEFLEET_BENCHDATA"]) if os.environ.get("FACEFLEET_BENCHDATA") else None,
        ROOT.parent / "shared" / "benchdata",
        Path("/work/shared/benchdata"),
    ]
    for base in candidates:
        if base is not None and (base / name).is_dir():
            return base / name
    pytest.skip(f"benchmark data {name!r} not found (set FACEFLEET_BENCHDATA to the benchdata folder)")
