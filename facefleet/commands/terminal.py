"""`facefleet terminal ...`: run the terminal agent, enroll and verify users, show local status."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="The terminal agent (runs on a face-authentication terminal).", no_args_is_help=True)
console = Console()
DataDir = Annotated[
    Path, typer.Option("--data-dir", help="where the terminal keeps models, keys and templates")
]


@app.command("run")
def run(
    data_dir: DataDir,
    server: Annotated[str | None, typer.Option("--server", help="platform URL (first start)")] = None,
    enroll_token: Annotated[
        str | None, typer.Option("--enroll-token", help="one-time token (first start)")
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="poll once and exit")] = False,
    poll_interval: Annotated[float, typer.Option("--poll-interval", help="seconds between polls")] = 10.0,
) -> None:
    """Enroll on first start, then poll the assignment, install verified models and send heartbeats."""
    from facefleet.terminal.agent import TerminalAgent
    from facefleet.terminal.client import DeviceApiError
    from facefleet.terminal.local import Terminal

    terminal = Terminal(data_dir)
    if terminal.identity() is None and not (server and enroll_token):
        console.print("[red]error:[/red] this terminal is not enrolled: pass --server and --enroll-token")
        raise typer.Exit(code=1)
    agent = TerminalAgent(terminal, server_url=server, poll_interval=poll_interval)
    try:
        if terminal.identity() is None and enroll_token:
            identity = agent.enroll_device(enroll_token)
            console.print(
                f"enrolled as device {identity.device_id} ({identity.name}, group {identity.group})"
            )
        if once:
            console.print(f"poll: {agent.run_once()}")
            return
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        logging.getLogger("facefleet.terminal").setLevel(logging.INFO)
        agent.run(stop=stop, on_poll=_print_outcome)
    except DeviceApiError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(code=1) from error
    finally:
        agent.close()


def _print_outcome(outcome: str) -> None:
    if outcome != "idle":
        console.print(f"poll: {outcome}")


def _terminal(data_dir: Path):  # type: ignore[no-untyped-def]
    from facefleet.terminal.local import Terminal

    return Terminal(data_dir)


@app.command("enroll")
def enroll(
    user: Annotated[str, typer.Argument()],
    images: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False)],
    data_dir: DataDir,
) -> None:
    """Enroll USER from one or more aligned face images (templates for the current model)."""
    terminal = _terminal(data_dir)
    try:
        count = terminal.enroll_user(user, [path.read_bytes() for path in images])
    except (RuntimeError, ValueError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(code=1) from error
    console.print(f"enrolled {user} with {count} image(s) on model version {terminal.current_version_id()}")


@app.command("verify")
def verify(
    user: Annotated[str, typer.Argument()],
    image: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    data_dir: DataDir,
) -> None:
    """Verify IMAGE against USER's templates: prints the decision and the score (exit 2 on no match)."""
    terminal = _terminal(data_dir)
    try:
        result = terminal.verify_user(user, image.read_bytes())
    except (RuntimeError, ValueError, KeyError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(code=1) from error
    decision = "[green]MATCH[/green]" if result.match else "[red]NO MATCH[/red]"
    console.print(
        f"{decision} {user}: score {result.score:.4f} (threshold {result.threshold:.4f}, model "
        f"version {result.model_version_id}{', adapted' if result.adapted_now else ''})"
    )
    if not result.match:
        raise typer.Exit(code=2)


@app.command("status")
def status(data_dir: DataDir) -> None:
    """Show the terminal's identity, installed models and enrolled users."""
    terminal = _terminal(data_dir)
    identity = terminal.identity()
    model = terminal.current_model() if identity else None
    table = Table("field", "value")
    table.add_row(
        "device",
        f"{identity.device_id} ({identity.name}, group {identity.group})" if identity else "not enrolled",
    )
    table.add_row("server", identity.server_url if identity else "-")
    table.add_row("current model version", str(terminal.current_version_id() or "-"))
    table.add_row("model", f"{model.card.name} v{model.card.version}" if model else "-")
    table.add_row("previous model version", str(terminal.previous_version_id() or "-"))
    table.add_row(
        "adaptation",
        ("on" if identity and identity.adaptation_enabled else "off")
        + (" (adapted)" if model and model.adapted else ""),
    )
    adaptation = terminal.adaptation_status() if model else None
    if adaptation is not None:
        table.add_row(
            "adaptation updates",
            f"{adaptation.updates_applied} applied, {adaptation.updates_rejected} refused by the guard, "
            f"{adaptation.resets} reset(s), {adaptation.fallbacks} fallback(s)",
        )
        if adaptation.probe_far is not None:
            table.add_row("impostor probe FAR", f"{adaptation.probe_far:.4f}")
    table.add_row("users", ", ".join(terminal.db.users()) or "-")
    console.print(table)


@app.command("reset-adaptation")
def reset_adaptation(data_dir: DataDir) -> None:
    """Go back to the shipped model's upper layers (drops on-device adaptation; templates re-extracted)."""
    terminal = _terminal(data_dir)
    try:
        state = terminal.reset_adaptation("requested by the operator")
    except RuntimeError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(code=1) from error
    version = terminal.current_version_id()
    console.print(f"adaptation reset on model version {version} ({state.resets} in all)")
