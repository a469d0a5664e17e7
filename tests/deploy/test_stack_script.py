"""scripts/stack-test (the real compose boot, `make stack-test`) hangs together, offline: the script parses,
every step it runs exists, the override file changes only the services whose images cannot be pulled here."""

from __future__ import annotations

import ast
import re
import subprocess

import yaml
from deploy_checks import REPO

SCRIPT = REPO / "scripts" / "stack-test"
USER_STEPS = REPO / "scripts" / "stack" / "user_steps.py"
OVERRIDE = REPO / "scripts" / "stack" / "compose.override.yml"


def _main_steps() -> list[list[str]]:
    """The `step NAME LIMIT COMMAND...` calls of the script's main(), as [NAME, LIMIT, COMMAND...]."""
    body = SCRIPT.read_text().split("\nmain() {\n", 1)[1].split("\n}\n", 1)[0]
    return [
        line.split(" step ", 1)[1].split() for line in body.splitlines() if f" {line.strip()}".count(" step ")
    ]


def test_the_script_parses() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)


def test_every_step_runs_an_exported_function_or_a_user_step() -> None:
    script = SCRIPT.read_text()
    exports = re.findall(r"export -f ((?:[^\n\\]|\\\n)+)", script)
    exported = set(" ".join(exports).replace("\\\n", " ").split())
    tree = ast.parse(USER_STEPS.read_text())
    user_steps = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier()
    }
    steps = _main_steps()
    assert {"scheduler-policy-once", "terminal-agent", "kill-worker-resume"} <= {name for name, *_ in steps}
    for _name, limit, *command in steps:
        assert limit.isdigit(), f"every step has a time limit: {_name}"
        if command[0] == "user":
            assert command[1] in user_steps, f"user_steps.py has no step {command[1]!r}"
        else:
            assert command[0] in exported, f"{command[0]} is not exported (timeout runs it in a child bash)"
    code = [line.split(" #")[0] for line in script.splitlines() if not line.lstrip().startswith("#")]
    for called in re.findall(r"\buser ([a-z_]+)", "\n".join(code)):
        assert called in user_steps, f"the script calls user_steps.py {called}, which does not exist"


class _ComposeLoader(yaml.SafeLoader):
    """Compose's `!override` / `!reset` tags read as plain values."""


for _tag in ("!override", "!reset"):
    _ComposeLoader.add_constructor(_tag, lambda loader, node: loader.construct_sequence(node))


def test_the_override_changes_only_the_images_that_cannot_be_pulled() -> None:
    override = yaml.load(OVERRIDE.read_text(), Loader=_ComposeLoader)  # noqa: S506 - a SafeLoader subclass
    assert set(override["services"]) == {"postgres", "minio", "minio-bucket"}
