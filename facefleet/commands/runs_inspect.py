"""`facefleet runs logs | metrics | compare | plot`: read what a run recorded, locally or from the API."""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from sqlalchemy.orm import Session

from facefleet.client import FacefleetClient
from facefleet.commands._complete import complete_run_ids
from facefleet.commands._output import JsonOption, make_console, print_json
from facefleet.commands._remote import ServerOption, connect, local_session, reported_errors
from facefleet.platform.db.models import Run
from facefleet.platform.errors import InvalidInputError, NotFoundError
from facefleet.platform.runs import service
from facefleet.platform.runs.schemas import RunView

console = make_console()
RunIdArgument = Annotated[int, typer.Argument(min=1, help="run id", autocompletion=complete_run_ids)]
Series = dict[str, list[tuple[int, float]]]
LOSS_NAMES = ("loss", "identity_loss", "domain_loss", "kl_loss")


def local_run(session: Session, run_id: int) -> Run:
    """The run, or the API's own 404 words (so both modes refuse alike)."""
    try:
        return service.get_run(session, run_id)
    except NotFoundError:
        raise NotFoundError(
            f"run {run_id} does not exist; `facefleet runs list` shows the runs", field="run_id"
        ) from None


def _view(client: FacefleetClient | None, run_id: int) -> RunView:
    if client is not None:
        return RunView.model_validate(client.get(f"/v1/runs/{run_id}"))
    with local_session() as session:
        return service.run_view(session, local_run(session, run_id))


def fetch_series(client: FacefleetClient | None, run_id: int) -> Series:
    """Every metric of a run as ``{name: [(step, value), ...]}`` (404 names the run in both modes)."""
    if client is not None:
        body = client.get(f"/v1/runs/{run_id}/metrics")
        return {name: [(p["step"], p["value"]) for p in points] for name, points in body["series"].items()}
    with local_session() as session:
        local_run(session, run_id)
        return service.run_metrics(session, run_id)


# ---- logs -------------------------------------------------------------------------------------------


def _local_log(run_id: int) -> str:
    from facefleet.platform.settings import get_settings

    with local_session() as session:
        status = local_run(session, run_id).status
    path = Path(get_settings().data_dir).resolve() / "runs" / f"{run_id}.log"
    if not path.is_file():
        raise NotFoundError(
            f"no logs for run {run_id} here yet (status {status}); runs started by the ray launchers keep "
            "their logs in the Ray dashboard"
        )
    return path.read_text(encoding="utf-8", errors="replace")


def _read_log(client: FacefleetClient | None, run_id: int) -> str:
    if client is not None:
        return client.request("GET", f"/v1/runs/{run_id}/logs", params={"tail": 100_000}).text
    return _local_log(run_id)


def logs(
    run_id: RunIdArgument,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until the run ends.")
    ] = False,
    tail: Annotated[int, typer.Option("--tail", min=1, help="Print only the last N lines first.")] = 1000,
    interval: Annotated[float, typer.Option("--interval", min=0.1, help="Seconds between polls.")] = 2.0,
    server: ServerOption = None,
) -> None:
    """Print a run's log (the worker's output), optionally following it."""
    with reported_errors(), connect(server) as client:
        lines = _read_log(client, run_id).splitlines()
        for line in lines[-tail:]:
            typer.echo(line)
        printed = len(lines)
        try:
            while follow:
                if _view(client, run_id).status in service.FINISHED:
                    follow = False  # print what the run wrote last, then stop
                time.sleep(0 if not follow else interval)
                lines = _read_log(client, run_id).splitlines()
                for line in lines[printed:]:
                    typer.echo(line)
                printed = max(printed, len(lines))
        except KeyboardInterrupt:
            raise typer.Exit(code=130) from None


# ---- metrics ----------------------------------------------------------------------------------------


def metrics(
    run_id: RunIdArgument,
    as_csv: Annotated[bool, typer.Option("--csv", help="Every point as CSV: step,name,value.")] = False,
    names: Annotated[str | None, typer.Option("--names", help="Comma-separated metric names.")] = None,
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """A run's metrics: a summary per metric, every point as CSV, or the API's JSON."""
    if as_csv and as_json:
        raise typer.BadParameter("choose one of --csv and --json")
    with reported_errors(), connect(server) as client:
        series = fetch_series(client, run_id)
    if names:
        wanted = {name.strip() for name in names.split(",") if name.strip()}
        series = {name: points for name, points in series.items() if name in wanted}
    if as_json:
        print_json(
            {
                "run_id": run_id,
                "series": {
                    name: [{"step": s, "name": name, "value": v} for s, v in points]
                    for name, points in series.items()
                },
            }
        )
        return
    if as_csv:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["step", "name", "value"])
        for name, points in series.items():
            writer.writerows((step, name, value) for step, value in points)
        sys.stdout.write(buffer.getvalue())
        return
    table = Table("metric", "points", "first step", "last step", "last", "min", "max")
    for name in sorted(series, key=lambda n: (n.startswith("eval/"), n)):
        points = series[name]
        values = [v for _, v in points]
        table.add_row(
            name,
            str(len(points)),
            str(points[0][0]),
            str(points[-1][0]),
            f"{values[-1]:.4g}",
            f"{min(values):.4g}",
            f"{max(values):.4g}",
        )
    console.print(table)


# ---- compare ----------------------------------------------------------------------------------------


def latest_values(series: Series) -> dict[str, float]:
    return {name: points[-1][1] for name, points in series.items() if points}


def compare(
    run_ids: Annotated[
        list[int], typer.Argument(help="2 to 4 run ids", min=1, autocompletion=complete_run_ids)
    ],
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """The latest value of every metric of 2-4 runs side by side (the console's compare view)."""
    unique = list(dict.fromkeys(run_ids))
    with reported_errors():
        if not 2 <= len(unique) <= 4:
            raise InvalidInputError(f"compare 2 to 4 different runs (got {len(unique)})", field="run_ids")
        with connect(server) as client:
            views = [_view(client, run_id) for run_id in unique]
            latest = {run_id: latest_values(fetch_series(client, run_id)) for run_id in unique}
    names = sorted(
        {name for values in latest.values() for name in values}, key=lambda n: (not n.startswith("eval/"), n)
    )
    if as_json:
        print_json(
            {
                "runs": views,
                "metrics": {
                    name: {str(run_id): latest[run_id].get(name) for run_id in unique} for name in names
                },
            }
        )
        return
    table = Table("", *[f"run {view.id}" for view in views])
    table.add_row("name", *[view.name for view in views])
    table.add_row("status", *[view.status for view in views])
    table.add_row("steps", *[f"{view.step}/{view.total_steps}" for view in views])
    for name in names:
        values = [latest[run_id].get(name) for run_id in unique]
        table.add_row(name, *["-" if value is None else f"{value:.4g}" for value in values])
    console.print(table)


# ---- plot -------------------------------------------------------------------------------------------


def _roc_document(client: FacefleetClient | None, run_id: int) -> dict[str, Any] | None:
    """The ROC curves the evaluation stored (``runs/<id>/plots/roc.json``), or None before evaluation."""
    try:
        if client is not None:
            return dict(client.get(f"/v1/runs/{run_id}/plots/roc.json"))
        from facefleet.platform.store import get_store

        with local_session() as session:
            local_run(session, run_id)
        return dict(json.loads(get_store().get_bytes(f"runs/{run_id}/plots/roc.json")))
    except KeyError:  # the store's ObjectNotFoundError
        return None
    except NotFoundError as error:
        if error.field == "file_name":  # the run exists, its ROC does not
            return None
        raise


def plot(
    run_id: RunIdArgument,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.", dir_okay=False)],
    kind: Annotated[str, typer.Option("--kind", help="loss | roc")] = "loss",
    server: ServerOption = None,
) -> None:
    """Draw a run's loss curves (or ROC) into a PNG, from its recorded metrics."""
    with reported_errors():
        if kind not in ("loss", "roc"):
            raise InvalidInputError(f"--kind {kind!r} is unknown; use loss or roc", field="kind")
        if out.suffix.lower() != ".png":
            raise InvalidInputError(f"{out} must end in .png", field="out")
        with connect(server) as client:
            if kind == "loss":
                series = fetch_series(client, run_id)
                curves = {name: series[name] for name in LOSS_NAMES if series.get(name)}
                if not curves:
                    raise NotFoundError(f"run {run_id} has recorded no loss yet")
                png = _loss_png(run_id, curves)
            else:
                document = _roc_document(client, run_id)
                if not document or not document.get("sets"):
                    raise NotFoundError(
                        f"run {run_id} has no ROC yet (it is written when the run is evaluated)"
                    )
                png = _roc_png(run_id, document)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(png)
    console.print(f"wrote {out}")


def _figure_png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _loss_png(run_id: int, curves: Series) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for name, points in curves.items():
        steps, values = zip(*points, strict=True)
        axis.plot(steps, values, label=name)
    axis.set(xlabel="step", ylabel="loss", title=f"run {run_id}: training losses")
    axis.legend(fontsize=8)
    try:
        return _figure_png(figure)
    finally:
        plt.close(figure)


def _roc_png(run_id: int, document: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 5))
    for set_name, modes in document["sets"].items():
        for mode, curve in modes.items():
            axis.plot(curve["fpr"], curve["tpr"], label=f"{set_name} {mode} (AUC {curve['auc']:.3f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":")
    axis.set(xlabel="false accept rate", ylabel="true accept rate", title=f"run {run_id}: ROC")
    axis.legend(fontsize=7)
    try:
        return _figure_png(figure)
    finally:
        plt.close(figure)
