"""The CLI for scripts: `--json` on every list/show command in local and remote mode (same documents),
output that is never cut when piped, runs logs/metrics/compare/plot, and the same refusals in both modes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from facefleet.cli import app
from tests.ui.conftest import Console, console  # noqa: F401 - the seeded server fixture

runner = CliRunner()


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch, key: str | None = None) -> Result:
    if key is not None:
        monkeypatch.setenv("FACEFLEET_API_KEY", key)
    from facefleet.platform.settings import get_settings

    get_settings.cache_clear()
    return runner.invoke(app, args)


def as_json(result: Result) -> object:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


LIST_AND_SHOW = [
    (["datasets", "list"], lambda doc: {d["name"] for d in doc} == {"faces-a", "faces-b", "faces-verify"}),
    (["datasets", "show", "faces-a"], lambda doc: doc["report"]["identity_count"] == 6),
    (["runs", "list"], lambda doc: [r["id"] for r in doc] == [4, 3, 2, 1]),
    (["runs", "show", "1"], lambda doc: doc["status"] == "succeeded" and "roc.json" in doc["files"]),
    (["models", "list"], lambda doc: doc[0]["aliases"] == {"candidate": 2, "production": 1}),
    (["models", "list", "facefleet"], lambda doc: sorted(v["version"] for v in doc) == [1, 2, 3]),
    (
        ["models", "show", "facefleet", "3"],
        lambda doc: "not better than production v1" in doc["promote_declined"][0]["reason"],
    ),
    (["devices", "list"], lambda doc: len(doc) == 5 and doc[0]["group"] == "lobby"),
    (["deployments", "list"], lambda doc: [d["id"] for d in doc] == [2, 1]),
    (["deployments", "show", "2"], lambda doc: doc["stage"] == "canary" and len(doc["devices"]) == 5),
    (["policies", "list"], lambda doc: doc[0]["name"] == "nightly" and doc[0]["auto_promote"] is True),
    (["policies", "show", "1"], lambda doc: doc["verification_sets"] == ["faces-verify"]),
    (["keys", "list"], lambda doc: {k["name"] for k in doc} >= {"ops-admin", "auditor"}),
    (["runs", "metrics", "1"], lambda doc: doc["run_id"] == 1 and len(doc["series"]["loss"]) == 21),
    (["runs", "compare", "1", "2"], lambda doc: [r["id"] for r in doc["runs"]] == [1, 2]),
]


def _comparable(doc: object) -> object:
    """Drop what legitimately differs between the modes (URLs vs paths, last-used times)."""
    if isinstance(doc, dict):
        return {k: _comparable(v) for k, v in doc.items() if k not in ("files", "last_used_at")}
    if isinstance(doc, list):
        return [_comparable(item) for item in doc]
    return doc


def test_json_is_the_same_document_locally_and_remotely(
    console: Console,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for args, check in LIST_AND_SHOW:  # one seeded server for all (seeding is the slow part)
        local = as_json(run_cli([*args, "--json"], monkeypatch))
        remote = as_json(
            run_cli([*args, "--json", "--server", console.url], monkeypatch, console.seeded.admin_key)
        )
        assert check(local), (args, local)  # type: ignore[operator]
        assert check(remote), (args, remote)  # type: ignore[operator]
        assert _comparable(local) == _comparable(remote), args


def test_piped_tables_are_never_cut_and_runs_show_gives_usable_locations(
    console: Console,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    listed = run_cli(["runs", "list"], monkeypatch)
    assert listed.exit_code == 0 and "faces-a+faces-b" in listed.output and "…" not in listed.output
    local = run_cli(["runs", "show", "1"], monkeypatch)
    assert local.exit_code == 0, local.output
    path_line = [line for line in local.output.splitlines() if line.startswith("roc.json: ")][0]
    assert Path(path_line.removeprefix("roc.json: ")).is_file()
    remote = run_cli(["runs", "show", "1", "--server", console.url], monkeypatch, console.seeded.viewer_key)
    assert f"roc.json: {console.url}/v1/runs/1/plots/roc.json" in remote.output
    assert f"console: {console.url}/ui/runs/1" in remote.output
    shown = run_cli(["models", "show", "facefleet", "3"], monkeypatch)
    assert "auto-promote declined" in shown.output and "models/facefleet/3/model.onnx" in shown.output
    assert Path(shown.output.split("model.onnx", 1)[1].split()[1]).is_file() or "store" in shown.output


def test_runs_inspection_commands(
    console: Console,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    for remote in (False, True):
        _inspect(console, monkeypatch, tmp_path, remote)


def _inspect(console: Console, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, remote: bool) -> None:  # noqa: F811
    extra = ["--server", console.url] if remote else []
    key = console.seeded.viewer_key if remote else None
    logs = run_cli(["runs", "logs", "1", "--tail", "3", *extra], monkeypatch, key)
    assert logs.exit_code == 0 and logs.output.splitlines()[-1].startswith("step 200")
    assert len(logs.output.splitlines()) == 3
    followed = run_cli(["runs", "logs", "1", "--follow", *extra], monkeypatch, key)  # finished: ends at once
    assert followed.exit_code == 0 and "step 0:" in followed.output
    csv_out = run_cli(["runs", "metrics", "1", "--csv", *extra], monkeypatch, key)
    assert csv_out.output.splitlines()[0] == "step,name,value" and ",loss," in csv_out.output
    table = run_cli(["runs", "metrics", "1", *extra], monkeypatch, key)
    assert "eval/faces-verify/cosine/accuracy" in table.output
    compared = run_cli(["runs", "compare", "1", "2", "3", *extra], monkeypatch, key)
    assert compared.exit_code == 0 and "run 3" in compared.output
    for kind in ("loss", "roc"):
        out = tmp_path / f"{kind}-{remote}.png"
        plotted = run_cli(["runs", "plot", "1", "--kind", kind, "--out", str(out), *extra], monkeypatch, key)
        assert plotted.exit_code == 0, plotted.output
        assert out.read_bytes().startswith(b"\x89PNG") and out.stat().st_size > 10_000
    no_roc = run_cli(
        ["runs", "plot", "4", "--kind", "roc", "--out", str(tmp_path / "x.png"), *extra], monkeypatch, key
    )
    assert no_roc.exit_code == 1 and "no ROC yet" in no_roc.output


REFUSALS = [
    (["runs", "list", "--status", "bogus"], "--status 'bogus' is unknown"),
    (["runs", "compare", "1"], "compare 2 to 4 different runs"),
    (["runs", "compare", "1", "2", "3", "4", "5"], "compare 2 to 4 different runs"),
    (["runs", "metrics", "99"], "run 99 does not exist"),
    (["runs", "logs", "99"], "run 99 does not exist"),
    (["runs", "plot", "1", "--out", "x.txt"], "must end in .png"),
    (["datasets", "list", "--kind", "bogus"], "--kind 'bogus' is unknown"),
]


def test_refusals_are_the_same_in_both_modes(
    console: Console,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for args, message in REFUSALS:
        local = run_cli(args, monkeypatch)
        remote = run_cli([*args, "--server", console.url], monkeypatch, console.seeded.viewer_key)
        for result in (local, remote):
            assert result.exit_code == 1, (args, result.output)
            assert message in result.output and "Traceback" not in result.output, (args, result.output)


def test_shell_completion_offers_run_ids_and_model_names(
    console: Console,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from facefleet.commands._complete import complete_model_names, complete_run_ids

    assert complete_run_ids("") == ["4", "3", "2", "1"]
    assert complete_model_names("face") == ["facefleet"] and complete_model_names("x") == []
    env = {"_FACEFLEET_COMPLETE": "complete_bash", "COMP_WORDS": "facefleet runs show ", "COMP_CWORD": "3"}
    offered = runner.invoke(app, [], env=env, prog_name="facefleet")
    assert offered.output.split() == ["4", "3", "2", "1"], offered.output
    monkeypatch.setenv("FACEFLEET_SERVER_URL", console.url)
    monkeypatch.setenv("FACEFLEET_API_KEY", console.seeded.viewer_key)
    from facefleet.platform.settings import get_settings

    get_settings.cache_clear()
    assert complete_run_ids("3") == ["3"] and complete_model_names("") == ["facefleet"]
    monkeypatch.setenv("FACEFLEET_SERVER_URL", "http://127.0.0.1:9")  # nobody answers: nothing offered
    get_settings.cache_clear()
    assert complete_run_ids("") == []


def test_ctrl_c_while_following_a_run_says_how_to_cancel_it(
    console: Console,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A real `facefleet runs watch` process, interrupted with SIGINT like Ctrl-C in a terminal."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen(
        [sys.executable, "-m", "facefleet.cli", "runs", "watch", str(console.seeded.running_run_id)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(8)  # imports, then a few polls of the still-running run
    assert process.poll() is None, process.communicate()[0]
    # A loaded machine may still be starting the process (imports, the local database) when the first
    # SIGINT arrives, and start-up can swallow it; a watch loop that ignored Ctrl-C would ignore the
    # second as well, so the test still fails on that.
    output = ""
    for _ in range(3):
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=30)
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        process.kill()
        raise AssertionError(f"`runs watch` ignored three SIGINTs: {process.communicate()[0]}")
    assert process.returncode == 130, output
    run_id = console.seeded.running_run_id
    assert f"stopped following run {run_id}; it keeps running" in output
    assert f"facefleet runs cancel {run_id}" in output and "Traceback" not in output
