"""README's `bench/admin_http.py` command runs and prints its table (tiny rate and length, both databases)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_admin_http_bench_prints_its_table(db: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "bench/admin_http.py",
            "--db",
            db,
            "--rate",
            "20",
            "--seconds",
            "1",
            "--routes",
            "models",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| GET ")]
    assert [row.split(" | ")[0] for row in rows] == ["| GET /healthz", "| GET /v1/models"]
    assert all(row.rstrip(" |").endswith("| 0") for row in rows), result.stdout  # no errors
    assert "idle server, no requests:" in result.stdout
