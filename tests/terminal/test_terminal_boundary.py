"""The terminal depends on nn and HTTP only (design §2): it must never import the platform."""

from __future__ import annotations

import ast
from pathlib import Path

import facefleet.terminal


def test_terminal_never_imports_the_platform_or_api() -> None:
    offenders = []
    for path in Path(facefleet.terminal.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.name}: {n}" for n in names if n.startswith(("facefleet.platform", "facefleet.api"))
            ]
    assert offenders == []
