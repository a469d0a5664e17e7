"""The README runs: every shell command in its ```bash/sh/shell/console blocks is run, in order, against a
temp data dir, so a documented command can never fail again.

README.md is re-read at test time (no copy of its commands lives here). Each command meets exactly one entry
of RULES below, an explicit list with a reason per entry: it runs as written, runs with `--help` (it would
serve or train until stopped), runs rewritten (named change, reason given), or is skipped (needs Docker, a
cluster, a remote server). A command no rule knows fails the test: add a rule rather than widening one.
`make X` is replaced by the commands of X's recipe in the Makefile (read at test time too).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHELL_BLOCKS = {"bash", "sh", "shell", "console"}
Action = Literal["run", "help", "rewrite", "skip"]


@dataclass(frozen=True)
class Rule:
    prefix: str  # the command (argv joined by single spaces) starts with this
    action: Action
    reason: str
    rewrite: Callable[[list[str]], list[str]] | None = None
    timeout: float = 180.0


def _short_training(argv: list[str]) -> list[str]:
    """`--set steps=N` -> 2 steps in Ray Train's local mode; every other option stays as documented."""
    out = ["steps=2" if re.fullmatch(r"steps=\d+", arg) else arg for arg in argv]
    if "steps=2" not in out:  # the steps came from a --config file
        out += ["--set", "steps=2"]
    return [*out, "--set", "scaling.num_workers=0"]


RULES: list[Rule] = [
    Rule("docker ", "skip", "needs a Docker engine (the image and compose file are checked in tests/deploy)"),
    Rule("kubectl ", "skip", "needs a Kubernetes cluster (manifests are validated offline in tests/deploy)"),
    Rule("helm ", "skip", "needs a Kubernetes cluster and the network"),
    Rule("curl ", "skip", "talks to a running server (the API's routes have their own tests)"),
    Rule("source .venv/bin/activate", "skip", "the test already runs the venv's own commands (PATH)"),
    Rule(
        "export ",
        "skip",
        "configures a real deployment (remote hosts, placeholders); the test sets FACEFLEET_* to a temp dir",
    ),
    Rule("pytest", "skip", "the test suite itself (`make test`), which contains this test"),
    Rule(
        "facefleet datasets register ../shared/benchdata/",
        "help",
        "aligns or reads the shared real-face photos (celeba_ids: ~50 min on 2 cores; may be absent on a "
        "machine); tests/faces, tests/api/test_api_align.py and tests/workers/test_landmarks_run.py run the "
        "same paths on subsets",
    ),
    Rule(
        "facefleet runs create --datasets helen",
        "help",
        "needs the HELEN dataset registered from the shared data above (tests/workers/test_landmarks_run.py "
        "trains a landmarks run on a subset)",
    ),
    Rule("facefleet demo", "help", "trains two real Ray runs for minutes (tests/test_end_to_end.py runs it)"),
    Rule("facefleet serve", "help", "serves until stopped"),
    Rule(
        "facefleet scheduler",
        "rewrite",
        "loops until stopped; `--once` runs one tick of the same loop",
        rewrite=lambda argv: [*argv, "--once"],
    ),
    Rule(
        "facefleet runs create",
        "rewrite",
        "trains for minutes: 2 steps in Ray Train's local mode instead, every other option as documented",
        rewrite=_short_training,
        timeout=600.0,
    ),
    Rule("facefleet datasets synth", "run", "writes the datasets the next commands use", timeout=300.0),
    Rule(
        "facefleet inspections label",
        "help",
        "needs an attempt a terminal uploaded (tests/api/test_api_inspections.py labels them, both modes)",
    ),
    Rule(
        "facefleet inspections export",
        "help",
        "needs labelled attempts (tests/api/test_api_inspections.py, tests/platform/inspections export them)",
    ),
    Rule(
        "facefleet inspections erase",
        "help",
        "needs a registered device (tests/api/test_api_inspections.py erases one's attempts)",
    ),
    Rule("facefleet ", "run", "the CLI itself, against the temp data dir"),
    Rule("openssl genpkey", "run", "writes a key file into the temp dir"),
    Rule("printf ", "run", "writes a config file the next commands read"),
    Rule("API=", "skip", "sets shell variables for the curl examples that follow"),
    Rule("cp .env.example .env", "run", "copies the example env file inside the temp checkout view"),
]


@dataclass
class Command:
    argv: list[str]
    where: str  # README.md:LINE

    @property
    def text(self) -> str:
        return " ".join(self.argv)


def shell_blocks(readme: str) -> list[tuple[int, str, list[str]]]:
    """(line of the opening fence, language, lines) of every fenced block; indented fences included."""
    blocks, lines = [], readme.splitlines()
    index = 0
    while index < len(lines):
        opening = re.match(r"\s*```(\w*)\s*$", lines[index])
        if not opening:
            index += 1
            continue
        start, body = index + 1, []
        index += 1
        while index < len(lines) and not re.match(r"\s*```\s*$", lines[index]):
            body.append(lines[index])
            index += 1
        blocks.append((start, opening.group(1).lower(), body))
        index += 1
    return blocks


def commands_in(readme: str) -> list[Command]:
    commands: list[Command] = []
    for start, language, body in shell_blocks(readme):
        if language not in SHELL_BLOCKS:
            continue
        logical: list[tuple[int, str]] = []
        pending, pending_line = "", 0
        for offset, raw in enumerate(body):
            line = raw.strip()
            if language == "console":
                if not line.startswith("$ ") and not pending:
                    continue  # output shown after a prompt
                line = line.removeprefix("$ ")
            if not pending:
                pending_line = start + offset + 1
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            logical.append((pending_line, pending + line))
            pending = ""
        for line_no, line in logical:
            words = shlex.split(line, comments=True)
            current: list[str] = []
            for word in [*words, "&&"]:
                if word in ("&&", ";"):
                    if current:
                        commands.append(Command(current, f"README.md:{line_no}"))
                    current = []
                else:
                    current.append(word)
    return commands


def make_recipe(target: str) -> list[list[str]]:
    """The commands `make TARGET` runs (the Makefile's recipe, `$(BIN)/` dropped: the venv is on PATH)."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    for index, line in enumerate(lines):
        if re.match(rf"{re.escape(target)}\s*:(?!=)", line):
            recipe = []
            for body in lines[index + 1 :]:
                if not body.startswith("\t"):
                    break
                text = body.strip().lstrip("@-").replace("$(BIN)/", "")
                assert "$(" not in text, f"make {target}: cannot map recipe line {body!r} to a command"
                recipe.append(shlex.split(text))
            return recipe
    raise AssertionError(f"README runs `make {target}`, which the Makefile does not define")


def expand_make(commands: list[Command]) -> list[Command]:
    out = []
    for command in commands:
        if command.argv[0] == "make":
            assert len(command.argv) == 2, f"{command.where}: map `{command.text}` by hand"
            where = f"{command.where} (make {command.argv[1]})"
            out += [Command(argv, where) for argv in make_recipe(command.argv[1])]
        else:
            out.append(command)
    return out


def rule_for(command: Command) -> Rule | None:
    return next((rule for rule in RULES if (command.text + " ").startswith(rule.prefix)), None)


def _environment(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEFLEET_")}
    env.update(
        FACEFLEET_DATA_DIR=str(tmp / "data"),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
        RAY_USAGE_STATS_ENABLED="0",
        COLUMNS="200",
    )
    return env


def _checkout_view(tmp: Path) -> Path:
    """A folder that looks like the checkout (links to its top-level entries) where commands may write."""
    view = tmp / "checkout"
    view.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in (".git", ".venv", ".facefleet", ".env", "__pycache__"):
            (view / entry.name).symlink_to(entry)
    return view


def test_readme_commands_are_all_known() -> None:
    """Cheap: every documented command meets a rule, and every `make` target maps to its recipe."""
    commands = expand_make(commands_in((ROOT / "README.md").read_text()))
    assert commands, "no shell commands found in README.md: did the fences change?"
    unknown = [f"{c.where}: {c.text}" for c in commands if rule_for(c) is None]
    assert not unknown, "README commands with no rule in tests/test_readme_runs.py:\n" + "\n".join(unknown)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_readme_commands_run(tmp_path: Path) -> None:
    commands = expand_make(commands_in((ROOT / "README.md").read_text()))
    env, cwd = _environment(tmp_path), _checkout_view(tmp_path)
    failures, ran = [], []
    for command in commands:
        rule = rule_for(command)
        assert rule is not None, f"{command.where}: no rule for `{command.text}`"
        if rule.action == "skip":
            continue
        argv = command.argv
        if rule.action == "help":
            argv = [*argv, "--help"]
        elif rule.action == "rewrite":
            assert rule.rewrite is not None
            argv = rule.rewrite(argv)
        stdout_file = None
        if ">" in argv:  # `command > FILE`: the only shell redirection the README uses
            stdout_file, argv = cwd / argv[argv.index(">") + 1], argv[: argv.index(">")]
        program = shutil.which(argv[0], path=env["PATH"])
        if program is None:
            failures.append(f"{command.where}: `{argv[0]}` is not installed ({command.text})")
            continue
        try:
            done = subprocess.run(
                [program, *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=rule.timeout
            )
        except subprocess.TimeoutExpired:
            failures.append(f"{command.where}: `{' '.join(argv)}` ran past {rule.timeout:.0f} s")
            continue
        ran.append(" ".join(argv))
        if stdout_file is not None:
            stdout_file.write_text(done.stdout)
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip()[-1500:]
            failures.append(f"{command.where}: `{' '.join(argv)}` exited {done.returncode}:\n{output}")
    print("\nran:\n  " + "\n  ".join(ran))
    assert ran, "nothing ran"
    assert not failures, "documented commands that fail:\n\n" + "\n\n".join(failures)
