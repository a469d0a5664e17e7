"""Helpers for the deploy checks: render overlays, strict CRD schemas, and commands that must exist."""

from __future__ import annotations

import copy
import importlib.util
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tests.fixtures.servers import missing

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CRDS = DEPLOY / "crds"
OVERLAYS = ("dev", "prod")
KUBERNETES_VERSION = "1.30.0"


def render(folder: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize folder`, parsed; skips (fails in CI) without kubectl."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        missing("kubectl is not installed: cannot render the Kustomize overlays")
    done = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kubectl kustomize {folder} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _forbid_unknown_fields(schema: Any) -> Any:
    """Like the API server with fieldValidation=Strict: objects with known properties reject others."""
    if isinstance(schema, dict):
        out = {key: _forbid_unknown_fields(value) for key, value in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_forbid_unknown_fields(item) for item in schema]
    return schema


@cache
def crd_schema(kind: str, version: str = "v1") -> dict[str, Any]:
    """The strict JSON schema of a KubeRay kind from the CRD copies in deploy/crds/."""
    path = CRDS / f"ray.io_{kind.lower()}s.yaml"
    crd = yaml.safe_load(path.read_text())
    assert crd["spec"]["names"]["kind"] == kind
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = _forbid_unknown_fields(copy.deepcopy(entry["schema"]["openAPIV3Schema"]))
    # metadata is `type: object` in CRDs; apiVersion/kind must be present and right.
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    schema["properties"]["apiVersion"] = {"const": f"ray.io/{version}"}
    schema["properties"]["kind"] = {"const": kind}
    return schema


def validate_crd_object(obj: dict[str, Any]) -> None:
    import jsonschema

    jsonschema.Draft7Validator(crd_schema(obj["kind"])).validate(obj)


# --- commands that must exist ----------------------------------------------------------------------


def _click_root(program: str) -> Any:
    if program == "facefleet":
        import typer

        from facefleet.cli import app

        return typer.main.get_command(app)
    if program == "ray":
        from ray.scripts.scripts import cli

        return cli
    raise AssertionError(f"unknown program {program}")


def _is_group(command: Any) -> bool:
    # Duck-typed: typer vendors its own click (typer._click), ray uses click itself.
    return hasattr(command, "get_command") and hasattr(command, "list_commands")


def _walk_click(root: Any, program: str, args: list[str]) -> str | None:
    command, path = root, [program]
    rest = list(args)
    while _is_group(command) and rest and not rest[0].startswith("-"):
        token = rest.pop(0)
        ctx = command.context_class(command)
        sub = command.get_command(ctx, token)
        if sub is None:
            return (
                f"`{' '.join(path)}` has no subcommand {token!r} (has: {sorted(command.list_commands(ctx))})"
            )
        command, path = sub, [*path, token]
    if _is_group(command):
        return f"`{' '.join(path)}` is a group, not a command"
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for token in rest:
        if token.startswith("--"):
            option = token.split("=", 1)[0]
            if option not in known:
                return f"`{' '.join(path)}` has no option {option}"
    return None


def command_problem(argv: list[str]) -> str | None:
    """Why ``argv`` would not run in the image (None when its program, subcommands and options exist)."""
    if not argv:
        return "empty command"
    program = argv[0]
    if program in ("facefleet", "ray"):
        return _walk_click(_click_root(program), program, argv[1:])
    if program == "python" and len(argv) >= 3 and argv[1] == "-m":
        module = argv[2]
        if not module.startswith("facefleet."):
            return f"python -m {module}: only facefleet modules are expected"
        try:
            spec = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            spec = None
        return None if spec is not None else f"module {module} does not exist"
    return f"unexpected program {program!r}"
