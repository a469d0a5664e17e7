"""The demo's last act: the trained model goes to two simulated terminals, which enroll and verify a user."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from facefleet.platform.auth.service import create_api_key
from facefleet.platform.db.models import ModelVersion
from facefleet.platform.db.session import session_scope
from facefleet.platform.settings import get_settings

IMPOSTORS = 10


def pick_demo_faces(verification_dir: Path) -> tuple[list[bytes], bytes, list[bytes], str]:
    """Three enrollment images and a genuine probe of one held-out person, and one image of each of up to
    IMPOSTORS other people (all of them, in order: no picking of the ones that happen to be rejected)."""
    people = sorted(p for p in verification_dir.iterdir() if p.is_dir() and len(list(p.glob("*.jpg"))) >= 4)
    if len(people) < 2:
        raise RuntimeError(f"{verification_dir} needs two identities with 4+ images for the terminal demo")
    user_images = sorted(people[0].glob("*.jpg"))
    impostors = [sorted(person.glob("*.jpg"))[0].read_bytes() for person in people[1 : IMPOSTORS + 1]]
    enroll = [path.read_bytes() for path in user_images[:3]]
    return enroll, user_images[3].read_bytes(), impostors, people[0].name


def run_terminal_act(
    *, model_name: str, model_version: int, verification_dir: Path, console: Console
) -> list[dict[str, Any]]:
    """Serve the API in-process, deploy (canary) to two terminals, enroll + verify on each, print a table."""
    from facefleet.api.app import create_app
    from facefleet.terminal.demo import deploy_to_simulated_terminals, serve_in_background

    with session_scope() as session:
        version_id = session.scalars(
            select(ModelVersion.id).where(
                ModelVersion.name == model_name, ModelVersion.version == model_version
            )
        ).one()
        _row, admin_key = create_api_key(session, name="demo-terminal-act", role="admin")
    enroll, genuine, impostor, user = pick_demo_faces(verification_dir)
    root = get_settings().data_dir / "demo" / "terminals"
    with console.status(f"deploying {model_name} v{model_version} to 2 simulated terminals (canary 50%)"):
        with serve_in_background(create_app()) as url:
            results = deploy_to_simulated_terminals(
                url,
                admin_key,
                model_version_id=version_id,
                root=root,
                enroll_images=list(enroll),
                genuine_image=genuine,
                impostor_image=impostor,
                user=user,
            )
    table = Table(
        "terminal",
        "model version id",
        "genuine score",
        "genuine accepted",
        "highest impostor score",
        "impostors accepted",
        "threshold",
        title=f"terminals: enrolled {user} (3 images), then verified a new image of {user} and one image "
        f"of each of {len(impostor)} other people (threshold: the model card's, chosen for a 1% "
        "false-accept rate on the verification set)",
    )
    for r in results:
        table.add_row(
            r.terminal,
            str(r.model_version_id),
            f"{r.genuine_score:.3f}",
            "yes" if r.genuine_match else "no",
            f"{r.impostor_score:.3f}",
            f"{r.impostors_accepted} of {r.impostors_tried}",
            f"{r.threshold:.3f}",
        )
    console.print(table)
    console.print(f"terminal data (installed models, templates): {root}")
    return [asdict(result) for result in results]
