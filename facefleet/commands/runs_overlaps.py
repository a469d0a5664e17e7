"""`facefleet runs overlaps ID`: identities across a run's training datasets that are probably one person."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from facefleet.commands._complete import complete_run_ids
from facefleet.commands._output import JsonOption, make_console, print_json
from facefleet.commands._remote import ServerOption, connect, local_session, reported_errors
from facefleet.platform.runs.overlaps import MAX_PAGE, OverlapPage, get_run_overlaps

console = make_console()
RunIdArgument = Annotated[int, typer.Argument(min=1, help="run id", autocompletion=complete_run_ids)]


def overlaps(
    run_id: RunIdArgument,
    limit: Annotated[int, typer.Option("--limit", min=1, max=MAX_PAGE, help="Pairs to show.")] = 100,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Pairs to skip (best first).")] = 0,
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """Pairs of identities of different training datasets that are probably one person (found when the
    run succeeded), best score first."""
    with reported_errors(), connect(server) as client:
        if client is not None:
            page = OverlapPage.model_validate(
                client.get(f"/v1/runs/{run_id}/overlaps", offset=offset, limit=limit)
            )
        else:
            from facefleet.platform.store import get_store

            with local_session() as session:
                page = get_run_overlaps(session, get_store(), run_id, offset=offset, limit=limit)
    if as_json:
        print_json(page.model_dump(mode="json"))
        return
    table = Table(
        "#",
        "dataset",
        "identity",
        "dataset ",
        "identity ",
        "score",
        title=f"run {run_id}: {page.count} identity pair(s) that are probably one person "
        f"(cut {page.threshold:.3f}: false-match rate {page.false_match_rate:g} within datasets"
        + ("" if page.calibration_reliable else ", too few classes to measure it: no within-dataset match")
        + ")",
    )
    for number, pair in enumerate(page.pairs, page.offset + 1):
        table.add_row(
            str(number),
            f"{pair.first.dataset}:{pair.first.version}",
            pair.first.identity,
            f"{pair.second.dataset}:{pair.second.version}",
            pair.second.identity,
            f"{pair.score:.3f}",
        )
    console.print(table)
    shown_to = page.offset + len(page.pairs)
    if shown_to < page.count:
        console.print(f"showing {page.offset + 1}-{shown_to} of {page.count}; more with --offset {shown_to}")
